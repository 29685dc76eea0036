import json

import numpy as np
import torch

import model
from model.datasets.motion import CLASSES, MotionConfig, MotionDataset
from model.train import MIRROR, REVERSE, label_permutation, main, prefix_loss


def test_a_few_training_steps_on_motion_clips_lower_the_loss():
    torch.manual_seed(0)
    config = MotionConfig(size=32, frames=6, fps=5.0)
    dataset = MotionDataset(config, num_clips=20, seed=3, as_float=True)
    video = torch.stack([dataset[i][0] for i in range(20)])
    labels = torch.tensor([dataset[i][1] for i in range(20)])
    net = model.create_model("movinet_test_stream", num_classes=len(CLASSES)).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)

    def loss_now():
        logits, _ = net(video, per_frame=True)
        return prefix_loss(logits, labels, min_frames=3, smoothing=0.0)

    first = loss_now().item()
    for _ in range(15):
        loss = loss_now()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_now().item() < 0.8 * first


def test_label_swaps_for_mirrored_and_reversed_clips():
    mirror, reverse = label_permutation(CLASSES, MIRROR), label_permutation(CLASSES, REVERSE)
    index = {name: i for i, name in enumerate(CLASSES)}
    assert mirror[index["pan left"]] == index["pan right"]
    assert mirror[index["tilt up"]] == index["tilt up"]
    assert mirror[index["rotate clockwise"]] == index["rotate counter-clockwise"]
    assert reverse[index["zoom in"]] == index["zoom out"] and reverse[index["tilt down"]] == index["tilt up"]
    assert reverse[index["shake"]] == index["shake"] and reverse[index["static"]] == index["static"]
    assert torch.equal(mirror[mirror], torch.arange(len(CLASSES)))


def test_training_cli_writes_weights_with_metadata_and_resumes(tmp_path, capsys):
    args = ["--model", "movinet_test_stream", "--size", "32", "--frames", "6", "--min-frames", "3", "--clips", "8",
            "--val-clips", "5", "--batch-size", "8", "--workers", "0", "--out", str(tmp_path), "--seed", "1"]
    assert main([*args, "--epochs", "1"]) == 0
    weights = tmp_path / "movinet_test_stream_motion.safetensors"
    net = model.load_model(weights)
    assert net.labels == list(CLASSES)
    assert (net.info.input_size, net.info.frame_rate, net.info.clip_frames) == (32, 5.0, 6)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] == 1
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    resumed = torch.load(tmp_path / "last.pt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["step"] == 2
    assert len(json.loads(resumed["history"])) == 2
    cached = np.load(tmp_path / "cache" / "train.npy", mmap_mode="r")
    assert cached.shape == (8, 6, 32, 32, 3)

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import model
from model.training.datasets.motion import CLASSES, MotionConfig, MotionDataset, render_clip
from model.training.recipe import EpochStats, Optimisation, prefix_loss
from model.training.train import MIRROR, REVERSE, augment, augmentations, label_permutation, main

from .datasets.test_motion import CLEAN, phase_shift


def test_a_few_training_steps_on_motion_clips_lower_the_loss():
    torch.manual_seed(0)
    config = MotionConfig(size=32, frames=6, fps=5.0)
    dataset = MotionDataset(config, num_clips=20, seed=3, as_float=True)
    video = torch.stack([dataset[i][0] for i in range(20)])
    labels = torch.tensor([dataset[i][1] for i in range(20)])
    net = model.create_model("movinet_test_stream", num_classes=len(CLASSES)).train()
    # the step both recipes take: AdamW, warm-up + cosine, clipping, the prefix loss
    optimisation = Optimisation(net, lr=3e-3, weight_decay=0.0, total_steps=15, device=torch.device("cpu"), amp=False)

    def loss_now():
        with torch.no_grad():
            logits, _ = net(video, per_frame=True)
        return prefix_loss(logits, labels, min_frames=3, smoothing=0.0)

    first = loss_now().item()
    stats = EpochStats()
    for _ in range(15):
        logits, loss = optimisation.step(video, labels, min_frames=3, smoothing=0.0)
        stats.add(logits, labels, loss)
    assert loss_now().item() < 0.8 * first
    assert stats.seen == 15 * 20 and 0.0 <= stats.accuracy <= 1.0 and stats.loss > 0


def test_a_resumed_optimisation_continues_the_schedule_at_its_step():
    net = model.create_model("movinet_test_stream", num_classes=3)
    video, labels = torch.rand(2, 3, 4, 32, 32), torch.tensor([0, 2])
    cpu = torch.device("cpu")
    first = Optimisation(net, lr=1e-3, weight_decay=1e-4, total_steps=10, device=cpu, amp=False)
    for _ in range(4):
        first.step(video, labels, min_frames=2, smoothing=0.0)
    saved = {"optimizer": first.optimizer.state_dict(), "step": 4}
    # a longer run resumed at step 4: the lr is the longer schedule's at step 4, the Adam moments carry over
    resumed = Optimisation(net, lr=1e-3, weight_decay=1e-4, total_steps=20, device=cpu, amp=False)
    resumed.resume(saved)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * resumed.schedule(4))
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 4
    resumed.step(video, labels, min_frames=2, smoothing=0.0)
    assert resumed.lr == pytest.approx(1e-3 * resumed.schedule(5))
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 5


def test_label_swaps_for_mirrored_and_reversed_clips():
    mirror, reverse = label_permutation(CLASSES, MIRROR), label_permutation(CLASSES, REVERSE)
    index = {name: i for i, name in enumerate(CLASSES)}
    assert mirror[index["pan left"]] == index["pan right"]
    assert mirror[index["tilt up"]] == index["tilt up"]
    assert mirror[index["rotate clockwise"]] == index["rotate counter-clockwise"]
    assert reverse[index["zoom in"]] == index["zoom out"] and reverse[index["tilt down"]] == index["tilt up"]
    assert reverse[index["shake"]] == index["shake"] and reverse[index["static"]] == index["static"]
    assert torch.equal(mirror[mirror], torch.arange(len(CLASSES)))


def test_augmented_clips_move_the_way_their_new_labels_say():
    """Mirror, reverse and transpose a clean pan left; each result moves like the label it gets."""
    index = {name: i for i, name in enumerate(CLASSES)}
    clip = torch.from_numpy(render_clip("pan left", 11, replace(CLEAN, size=64)))
    expected = {"pan left": (1, 0), "pan right": (-1, 0), "tilt up": (0, 1), "tilt down": (0, -1)}
    batch = clip.expand(64, *clip.shape)
    target = torch.full((64,), index["pan left"])
    augmented, labels = augment(batch, target, torch.Generator().manual_seed(0), augmentations(CLASSES))
    assert torch.equal(batch[0], clip)  # the input is left alone
    assert set(labels.tolist()) == {index[name] for name in expected}  # all four occur in 64 draws
    for video, label in zip(augmented.numpy(), labels.tolist(), strict=True):
        shift = np.mean([phase_shift(video[i], video[i + 1]) for i in range(0, 14, 2)], axis=0)
        direction = np.array(expected[CLASSES[label]])
        assert shift @ direction >= 1.0 and abs(shift @ direction[::-1]) < shift @ direction, (CLASSES[label], shift)


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

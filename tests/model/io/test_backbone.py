"""`load_backbone`: every tensor of a weights file but a new head, strictly; the head is re-initialised."""

from __future__ import annotations

import pytest
import torch

import model
from model.io.weights import load_backbone, load_state_dict_strict, save_weights
from model.registry import build_model


@pytest.fixture()
def weights(tmp_path):
    torch.manual_seed(0)
    source = build_model("movinet_test_stream", 7, labels=[f"c{i}" for i in range(7)],
                         info_overrides={"input_size": 48, "frame_rate": 4.0, "clip_frames": 6, "eval_min_size": 56},
                         hard_sigmoid="torch")
    return save_weights(source, tmp_path / "source.safetensors"), source


def test_new_head_for_other_classes_keeps_every_other_tensor_and_the_files_settings(weights):
    path, source = weights
    net, fresh = load_backbone(path, ["a", "b", "c"], {"clip_frames": 8})
    assert fresh == ["classifier.logits.bias", "classifier.logits.weight"]
    assert net.labels == ["a", "b", "c"] and net.num_classes == 3 and net.training
    assert (net.info.input_size, net.info.frame_rate, net.info.clip_frames, net.info.eval_min_size) == (48, 4.0, 8, 56)
    assert net.mode.hard_sigmoid == "torch"  # the file's mode options carry over
    ours, theirs = net.state_dict(), source.state_dict()
    for key, value in theirs.items():
        if key.startswith("classifier.logits."):
            assert ours[key].shape[0] == 3
        else:
            assert torch.equal(ours[key], value), key


def test_a_file_of_another_architecture_is_refused_naming_the_tensors():
    other = model.create_model("movinet_a0_stream", num_classes=3)
    with pytest.raises(ValueError, match="does not fit movinet_a0_stream") as error:
        load_state_dict_strict(other, model.create_model("movinet_test_stream", num_classes=3).state_dict(), "x",
                               fresh=("classifier.logits.",))
    assert "wrong shape" in str(error.value) or "missing" in str(error.value)
    assert "classifier.logits" not in str(error.value)  # the fresh keys never count against a file

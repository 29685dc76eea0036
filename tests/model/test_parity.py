"""Parity with the official TensorFlow MoViNet (fixtures made by tools/make_parity_fixtures.py).

Each fixture holds an official TF2 checkpoint with random non-trivial weights, an input clip and
what the official model returned. The checkpoint goes through our converter (no TensorFlow),
and the converted model must give the same logits and the same final stream states.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.io.convert import convert_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
# All 12 official variants at 600 classes: `python tools/make_parity_fixtures.py --all --out DIR`
# (TensorFlow, see tests/fixtures/parity/README.md), then MOVINET_PARITY_ALL=DIR.
ALL_DIR = os.environ.get("MOVINET_PARITY_ALL")


def variants(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "meta.json").is_file()) if root.is_dir() else []


def load_fixture(folder: Path):
    meta = json.loads((folder / "meta.json").read_text())
    overrides = {}
    if meta["mode"] == "stream":
        overrides["hard_sigmoid"] = meta["hard_sigmoid"]
        overrides["use_positional_encoding"] = meta["use_positional_encoding"]
    net = convert_checkpoint(folder / "ckpt", f"movinet_{meta['backbone']}_{meta['mode']}", **overrides)
    io = np.load(folder / "io.npz")
    video = torch.from_numpy(io["input"]).permute(0, 4, 1, 2, 3)  # TF [B,T,H,W,C] -> [B,C,T,H,W]
    return meta, net, io, video


def check_variant(folder: Path, scaled: bool = False) -> None:
    """``scaled``: tolerances relative to the largest reference value, for the deep random-weight
    models where TF's own XLA and plain runs differ by ~2e-4 (tests/fixtures/parity/README.md)."""
    meta, net, io, video = load_fixture(folder)
    with torch.no_grad():
        logits, state = net(video)
    reference = io["logits"] if meta["mode"] == "base" else io["logits_clip"]
    atol = 1e-4 * max(1.0, float(np.abs(reference).max())) if scaled else 1e-4
    np.testing.assert_allclose(logits.numpy(), reference, atol=atol, rtol=0)
    if meta["mode"] == "base":
        return
    official = {key[len("state/"):]: io[key] for key in io.files if key.startswith("state/")}
    assert set(official) == set(state), set(official) ^ set(state)
    for name, expected in official.items():
        ours = state[name].numpy()
        if expected.ndim == 5:  # TF channels-last -> ours channels-first
            expected = expected.transpose(0, 4, 1, 2, 3)
        else:  # official frame counts are [1] for the whole batch; ours are per row
            expected = np.broadcast_to(expected, ours.shape)
        np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4 if scaled else 1e-5, err_msg=name)
    steps, step_state = [], None
    with torch.no_grad():
        for t in range(video.shape[2]):
            out, step_state = net(video[:, :, t : t + 1], step_state)
            steps.append(out.numpy())
    np.testing.assert_allclose(np.stack(steps), io["logits_steps"], atol=atol, rtol=0)


@pytest.mark.parametrize("folder", variants(FIXTURES), ids=lambda p: p.name)
def test_converted_official_checkpoint_matches_tensorflow(folder):
    check_variant(folder)


def test_committed_fixtures_cover_base_stream_and_positional_encoding():
    names = {p.name for p in variants(FIXTURES)}
    assert {"test_base", "test_stream", "test_stream_pe", "a0_base", "a0_stream"} <= names


def test_parameter_counts_and_state_shapes_match_the_official_code():
    from model.registry import build_model

    official = json.loads((FIXTURES / "param_counts.json").read_text())
    height, width = official["state_input_shape"][2:4]
    assert len(official["models"]) >= 14
    for key, entry in official["models"].items():
        name = f"movinet_{key.removesuffix('_pe')}"
        net = build_model(name, official["num_classes"], use_positional_encoding=entry["use_positional_encoding"])
        assert sum(p.numel() for p in net.parameters()) == entry["trainable"], key
        bn_stats = sum(m.running_mean.numel() * 2 for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
        assert bn_stats == entry["non_trainable"], key
        if "states" not in entry:
            continue
        ours = net.init_state(1, height, width)
        assert set(ours) == set(entry["states"]), key
        for name, (shape, dtype) in entry["states"].items():
            expected = (shape[0], shape[4], *shape[1:4]) if len(shape) == 5 else tuple(shape)
            assert tuple(ours[name].shape) == expected, (key, name)
            assert str(ours[name].dtype) == f"torch.{dtype}", (key, name)


@pytest.mark.slow
@pytest.mark.skipif(ALL_DIR is None, reason="set MOVINET_PARITY_ALL to a folder made by make_parity_fixtures.py --all")
def test_all_official_variants_match_tensorflow():
    folders = variants(Path(ALL_DIR))
    assert len(folders) >= 12
    for folder in folders:
        check_variant(folder, scaled=True)

"""A fine-tuned user's SavedModel through ``python -m model.convert``, against what TensorFlow computed.

``tests/fixtures/saved_model/`` is the official A0 stream classifier with a 3-class head and seeded
random weights, exported by the official ``export_saved_model(causal=True)`` as the fine-tuning
tutorial does, and the logits of that exported model, loaded back and run frame by frame
(``tools/make_parity_fixtures.py --saved-model-fixture``; only its ``variables/`` bundle is
committed). No TensorFlow here: the command reads the bundle and its object graph with numpy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import model
from model.io.convert import main as convert_main
from model.io.tf_checkpoint import read_tf_checkpoint
from model.io.tf_saved_model import (
    SAVED_MODEL_EDGES,
    object_paths,
    parse_object_graph,
    read_saved_model_variables,
)
from model.io.weights import read_metadata

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"
SAVED_MODEL = FIXTURES / "saved_model"
PARITY = FIXTURES / "parity"
GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


def convert(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model.convert", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit code 2 and one ``error:`` message on stderr: no traceback, nothing on stdout."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_the_bundle_keys_are_short_paths_the_object_graph_names():
    keys = set(read_tf_checkpoint(SAVED_MODEL / "variables" / "variables"))
    # what Keras' SavedModel writes: the first path to each variable, through its `variables` lists
    assert "variables/0/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert not any(key.startswith("layer_with_weights-") for key in keys)


def test_saved_model_variables_are_named_as_the_training_checkpoint_names_them():
    ours = read_saved_model_variables(SAVED_MODEL)
    released_style = {k: v for k, v in read_tf_checkpoint(PARITY / "a0_stream" / "ckpt").items() if k.startswith("model/")}
    assert set(ours) == set(released_style)  # the same A0 stream network, saved the two ways
    classifier = "model/layer_with_weights-1/_classifier/"
    for key, value in ours.items():
        if not key.startswith(classifier):  # the heads differ: 3 classes here, 10 there
            assert value.shape == released_style[key].shape, key
    assert ours[f"{classifier}_conv/_conv/bias/.ATTRIBUTES/VARIABLE_VALUE"].shape == (3,)


@pytest.mark.parametrize("folder", ["a0_stream", "a0_base", "test_stream_pe"])
def test_object_paths_of_a_training_checkpoint_are_its_own_keys(folder):
    tensors = read_tf_checkpoint(PARITY / folder / "ckpt", include_strings=True)
    paths = object_paths(parse_object_graph(tensors.pop(GRAPH).item()), SAVED_MODEL_EDGES)
    assert paths == {key: key for key in tensors}


def test_cli_converts_the_tutorial_saved_model_to_the_tensorflow_logits(tmp_path):
    out = tmp_path / "mine.safetensors"
    result = convert(SAVED_MODEL, out, "--model", "movinet_a0_stream", "--labels", SAVED_MODEL / "labels.txt")
    assert result.returncode == 0, result.stderr
    assert "movinet_a0_stream, 3 classes" in result.stdout and "hard_sigmoid=model_garden" in result.stdout

    labels = (SAVED_MODEL / "labels.txt").read_text().splitlines()
    meta = read_metadata(out)
    assert meta["model"] == "movinet_a0_stream" and meta["num_classes"] == 3 and meta["labels"] == labels
    assert (meta["info"]["input_size"], meta["info"]["frame_rate"], meta["info"]["clip_frames"]) == (172, 5.0, 50)
    assert meta["mode"]["hard_sigmoid"] == "model_garden"  # what tf-models-official 2.20 computes
    assert meta["extra"] == {"source": "saved_model", "source_format": "saved_model"}

    net = model.create_model("movinet_a0_stream", weights=str(out))  # the service's way in
    assert net.labels == labels
    io = np.load(SAVED_MODEL / "io.npz")
    video = torch.from_numpy(io["input"]).permute(0, 4, 1, 2, 3)  # TF [B,T,H,W,C] -> [B,C,T,H,W]
    steps, state = [], None
    with torch.no_grad():
        clip_logits, _ = net(video)
        for t in range(video.shape[2]):
            logits, state = net(video[:, :, t : t + 1], state)
            steps.append(logits.numpy())
    # the exported SavedModel, loaded back by TF and fed one frame at a time
    np.testing.assert_allclose(np.stack(steps), io["logits_steps"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(clip_logits.numpy(), io["logits_clip"], atol=1e-4, rtol=0)
    assert np.abs(io["logits_steps"]).max() > 0.5  # non-trivial logits, not a pass by accident


def test_the_training_size_rate_and_window_go_into_the_metadata(tmp_path, capsys):
    out = tmp_path / "mine.safetensors"
    code = convert_main([str(SAVED_MODEL), str(out), "--model", "movinet_a0_stream", "--labels",
                         str(SAVED_MODEL / "labels.txt"), "--size", "224", "--fps", "2.5", "--frames", "8"])
    assert code == 0, capsys.readouterr().err
    info = read_metadata(out)["info"]
    assert (info["input_size"], info["frame_rate"], info["clip_frames"], info["eval_min_size"]) == (224, 2.5, 8, 250)


def test_the_variables_folder_itself_converts_the_same(tmp_path):
    whole, part = tmp_path / "whole.safetensors", tmp_path / "part.safetensors"
    assert convert_main([str(SAVED_MODEL), str(whole), "--model", "movinet_a0_stream"]) == 0
    assert convert_main([str(SAVED_MODEL / "variables"), str(part), "--model", "movinet_a0_stream"]) == 0
    assert read_metadata(part)["mode"]["hard_sigmoid"] == "model_garden"
    first, second = load_file(str(whole)), load_file(str(part))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_without_labels_the_classes_are_numbered(tmp_path):
    out = tmp_path / "mine.safetensors"
    assert convert_main([str(SAVED_MODEL), str(out), "--model", "movinet_a0_stream"]) == 0
    assert read_metadata(out)["labels"] == ["class_0", "class_1", "class_2"]


def test_a_labels_file_that_does_not_match_the_class_count_is_refused(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("pour tea\nwater plants\n")
    result = convert(SAVED_MODEL, tmp_path / "out.safetensors", "--model", "movinet_a0_stream", "--labels", labels)
    assert_refused(result, "2 labels given", "has 3 classes")
    assert not (tmp_path / "out.safetensors").exists()
    labels.write_text("a\nb\na\n")
    assert_refused(convert(SAVED_MODEL, tmp_path / "out.safetensors", "--model", "movinet_a0_stream", "--labels",
                           labels), "repeats 'a'")
    assert_refused(convert(SAVED_MODEL, tmp_path / "out.safetensors", "--model", "movinet_a0_stream", "--labels",
                           tmp_path / "missing.txt"), "cannot read the labels file")


def test_a_folder_that_is_not_a_saved_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    assert_refused(convert(tmp_path, tmp_path / "out.safetensors", "--model", "movinet_a0_stream"),
                   "neither a TF checkpoint", "nor a SavedModel")
    graph_only = tmp_path / "graph_only"
    graph_only.mkdir()
    (graph_only / "saved_model.pb").write_bytes(b"\x08\x01")
    assert_refused(convert(graph_only, tmp_path / "out.safetensors", "--model", "movinet_a0_stream"),
                   "a SavedModel without its variables")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_saved_model_of_another_model_size_is_refused_naming_the_one_it_fits(tmp_path):
    result = convert(SAVED_MODEL, tmp_path / "out.safetensors", "--model", "movinet_a1_stream")
    assert_refused(result, "holds a MoViNet of 15 blocks, movinet_a1_stream has 24", "it fits movinet_a0_stream")


def test_a_saved_model_of_the_other_mode_is_refused_naming_the_tensors(tmp_path):
    result = convert(SAVED_MODEL, tmp_path / "out.safetensors", "--model", "movinet_a0_base")
    assert_refused(result, "does not fit movinet_a0_base", "unexpected", "blocks.1.feature.conv_temporal.weight",
                   "wrong shape")


def test_a_truncated_variables_file_is_refused(tmp_path):
    broken = tmp_path / "saved_model"
    shutil.copytree(SAVED_MODEL, broken)
    data = broken / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert_refused(convert(broken, tmp_path / "out.safetensors", "--model", "movinet_a0_stream"), "truncated")


def test_the_fixture_records_how_it_was_made():
    meta = json.loads((SAVED_MODEL / "meta.json").read_text())
    assert meta["num_classes"] == 3 and meta["backbone"] == "a0" and meta["mode"] == "stream"
    assert "export_saved_model" in meta["export"]
    assert meta["checks"]["max_abs_clip_vs_saved_model_last_step"] < 1e-4
    committed = sorted(str(p.relative_to(SAVED_MODEL)) for p in (SAVED_MODEL / "variables").iterdir())
    assert committed == sorted(meta["committed"])

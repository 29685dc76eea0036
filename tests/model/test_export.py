"""ONNX export (model.export): onnxruntime on CPU equals PyTorch frame by frame, at any batch.

Exports are small (56x56: odd feature maps further down, so TF SAME's asymmetric padding is in
the graph) and shared per module; the parity models have perturbed BN statistics (helpers).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import model
from model.export import export_onnx, state_output_name

from .helpers import randomized

ROOT = Path(__file__).resolve().parents[2]
SIZE = 56
FRAMES = 50
ATOL = 1e-4


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test machines are small and shared
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def zero_state(sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    dtypes = {"tensor(float)": np.float32, "tensor(int32)": np.int32}
    return {
        node.name: np.zeros([batch, *node.shape[1:]], dtypes[node.type])
        for node in sess.get_inputs()
        if node.name != "frames"
    }


def onnx_step(sess, frames: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
    names = [output.name for output in sess.get_outputs()]
    outputs = dict(zip(names, sess.run(names, {"frames": frames, **state})))
    return outputs["logits"], {name: outputs[state_output_name(name)] for name in state}


def torch_per_frame(net: model.MoViNet, video: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        logits, _ = net(video, None, per_frame=True)  # [B, T, classes]
    return logits.numpy()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: on a small shared machine a second one mostly waits (and these models are tiny)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def a0(tmp_path_factory) -> tuple[model.MoViNet, Path]:
    net = randomized("movinet_a0_stream")
    return net, export_onnx(net, tmp_path_factory.mktemp("onnx") / "a0.onnx", size=(SIZE, SIZE))


@pytest.mark.parametrize("name", ["movinet_a0_stream", "movinet_a1_stream", "movinet_a2_stream"])
def test_stream_export_equals_pytorch_frame_by_frame(name, a0, tmp_path):
    net, path = a0 if name == "movinet_a0_stream" else (randomized(name), None)
    path = path or export_onnx(net, tmp_path / f"{name}.onnx", size=(SIZE, SIZE))
    video = torch.rand(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    want = torch_per_frame(net, video)
    sess = session(path)
    state = zero_state(sess, 2)
    for t in range(FRAMES):
        logits, state = onnx_step(sess, video[:, :, t : t + 1].numpy(), state)
        np.testing.assert_allclose(logits, want[:, t], rtol=0, atol=ATOL, err_msg=f"frame {t}")


def test_a_batch_of_sessions_at_different_positions_equals_each_session_alone(a0):
    net, path = a0
    sess = session(path)
    starts, steps = (0, 4, 9), 14  # three sessions join a batch of 3 (exported at batch 2)
    video = torch.rand(len(starts), 3, steps, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    state = zero_state(sess, len(starts))
    batched = {}
    for t in range(steps):
        for row, start in enumerate(starts):
            if t == start:  # a new stream in this row
                for value in state.values():
                    value[row] = 0
        logits, state = onnx_step(sess, video[:, :, t : t + 1].numpy(), state)
        for row, start in enumerate(starts):
            if t >= start:
                batched[row, t - start] = logits[row]
    for row, start in enumerate(starts):
        alone = zero_state(sess, 1)
        for t in range(steps - start):
            logits, alone = onnx_step(sess, video[row : row + 1, :, start + t : start + t + 1].numpy(), alone)
            np.testing.assert_allclose(batched[row, t], logits[0], rtol=0, atol=1e-5, err_msg=f"{row} {t}")
        want = torch_per_frame(net, video[row : row + 1, :, start:])
        np.testing.assert_allclose(batched[row, steps - start - 1], want[0, -1], rtol=0, atol=ATOL)
    counts = state["state_head_pool_frame_count"]
    assert counts.dtype == np.int32 and counts.tolist() == [steps - start for start in starts]


def test_state_round_trips_between_onnxruntime_and_pytorch(a0):
    net, path = a0
    sess = session(path)
    video = torch.rand(2, 3, 12, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    state = zero_state(sess, 2)
    for t in range(6):  # the state outputs fed back as inputs
        _, state = onnx_step(sess, video[:, :, t : t + 1].numpy(), state)
    with torch.no_grad():
        _, torch_state = net(video[:, :, :6])
    assert set(state) == set(torch_state) == set(net.init_state(1, SIZE, SIZE))
    for name, value in torch_state.items():
        assert state[name].dtype == value.numpy().dtype, name
        np.testing.assert_allclose(state[name], value.numpy(), rtol=0, atol=1e-4, err_msg=name)
    # a state from PyTorch resumes in onnxruntime (and the other way round) with equal answers
    with torch.no_grad():
        want, _ = net(video[:, :, 6:7], {name: torch.from_numpy(value) for name, value in state.items()})
    got, _ = onnx_step(sess, video[:, :, 6:7].numpy(), {name: value.numpy() for name, value in torch_state.items()})
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=ATOL)


def test_names_axes_and_metadata(a0):
    net, path = a0
    proto = onnx.load(str(path))
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    state_names = list(net.init_state(1, SIZE, SIZE))
    assert meta["format"] == "movinet-onnx" and meta["model"] == "movinet_a0_stream" and meta["mode"] == "stream"
    assert json.loads(meta["labels"]) == net.labels and int(meta["num_classes"]) == net.num_classes
    assert json.loads(meta["input_size"]) == [SIZE, SIZE]
    assert json.loads(meta["frame_rate"]) == net.info.frame_rate
    assert json.loads(meta["clip_frames"]) == net.info.clip_frames
    assert json.loads(meta["state_names"]) == state_names and meta["state_output_prefix"] == "new_"

    sess = session(path)
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    assert [node.name for node in inputs] == ["frames", *state_names]
    assert [node.name for node in outputs] == ["logits", *(f"new_{name}" for name in state_names)]
    assert inputs[0].shape == ["batch", 3, 1, SIZE, SIZE] and outputs[0].shape == ["batch", net.num_classes]
    assert all(node.shape[0] == "batch" for node in [*inputs, *outputs])
    assert "state_block1_layer0_stream_buffer" in state_names
    counts = [node for node in inputs if node.name.endswith("_frame_count")]
    assert counts and all(node.type == "tensor(int32)" and node.shape == ["batch"] for node in counts)


def test_positional_encoding_stream_export(tmp_path):
    # A3-A5 stream add a positional encoding of each session's frame index to the SE input.
    net = randomized("movinet_test_stream", use_positional_encoding=True)
    path = export_onnx(net, tmp_path / "pe.onnx", size=(33, 33))
    sess = session(path)
    assert any(node.name.endswith("_pos_enc_frame_count") for node in sess.get_inputs())
    video = torch.rand(3, 3, 20, 33, 33, generator=torch.Generator().manual_seed(4))
    want = torch_per_frame(net, video)
    state = zero_state(sess, 3)
    for t in range(20):
        logits, state = onnx_step(sess, video[:, :, t : t + 1].numpy(), state)
        np.testing.assert_allclose(logits, want[:, t], rtol=0, atol=ATOL, err_msg=f"frame {t}")


def test_base_export_equals_pytorch_on_clips_of_any_batch_and_length(tmp_path):
    net = randomized("movinet_a0_base")
    path = export_onnx(net, tmp_path / "base.onnx", size=(SIZE, SIZE), clip_frames=8)
    sess = session(path)
    assert sess.get_inputs()[0].shape == ["batch", 3, "time", SIZE, SIZE]
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["mode"] == "base" and json.loads(meta["state_names"]) == []
    for batch, frames in ((1, 5), (3, 11)):
        clip = torch.rand(batch, 3, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(frames))
        with torch.no_grad():
            want = net(clip)[0].numpy()
        (got,) = sess.run(["logits"], {"frames": clip.numpy()})
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"batch {batch}, {frames} frames")


def test_dynamo_exporter_gives_the_same_stream_graph(tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (not a dependency)")
    net = randomized("movinet_test_stream")
    path = export_onnx(net, tmp_path / "dynamo.onnx", size=(33, 33), exporter="dynamo")
    sess = session(path)
    video = torch.rand(3, 3, 6, 33, 33)
    want = torch_per_frame(net, video)
    state = zero_state(sess, 3)
    for t in range(6):
        logits, state = onnx_step(sess, video[:, :, t : t + 1].numpy(), state)
        np.testing.assert_allclose(logits, want[:, t], rtol=0, atol=ATOL)


# --- command line and docs -----------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model.export", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def motion_export(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("cli")
    result = run_cli("onnx", "--model", "movinet_a0_stream", "--weights", "motion", "--out", "a0.onnx", cwd=folder)
    return folder / "a0.onnx", result


def test_cli_exports_the_bundled_model(motion_export):
    path, result = motion_export
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "a0.onnx"
    assert "exporting a one-frame stream step at 64x64" in result.stderr  # the model's own input size
    assert re.search(r"onnxruntime vs PyTorch .*: max \|logits difference\| \S+ \(ok\)", result.stderr)
    net = model.create_model("movinet_a0_stream", weights="motion")
    sess = session(path)
    assert json.loads(sess.get_modelmeta().custom_metadata_map["labels"]) == net.labels
    video = torch.rand(1, 3, 8, 64, 64, generator=torch.Generator().manual_seed(5))
    want = torch_per_frame(net, video)
    state = zero_state(sess, 1)
    for t in range(8):
        logits, state = onnx_step(sess, video[:, :, t : t + 1].numpy(), state)
        np.testing.assert_allclose(logits, want[:, t], rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "movinet_a9_stream"], "error: unknown model 'movinet_a9_stream'; known models: movinet_a0_base"),
        (["--model", "movinet_a0_stream", "--weights", "missing.safetensors"], "error: weights file missing.safetensors does not exist"),
        (["--model", "movinet_a0_stream", "--size", "big"], "error: size must be N or HxW"),
    ],
)
def test_cli_errors_are_one_clear_line(args, message, tmp_path):
    result = run_cli("onnx", *args, "--out", "x.onnx", cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def doc_examples() -> str:
    """The Python blocks of docs/onnx.md marked ``<!-- test: run -->``, in order."""
    text = (ROOT / "docs" / "onnx.md").read_text()
    blocks = re.findall(r"<!-- test: run -->\s*```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 2
    return "\n".join(blocks)


def test_the_docs_example_runs_and_equals_pytorch(motion_export, monkeypatch, capsys):
    path, result = motion_export
    assert result.returncode == 0, result.stderr
    monkeypatch.chdir(path.parent)  # the example opens "a0.onnx", as the export command writes it
    namespace: dict = {}
    exec(compile(doc_examples(), "docs/onnx.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and printed[-1].startswith("frame 50: ")

    net = model.create_model("movinet_a0_stream", weights="motion")
    video = torch.from_numpy(np.stack(namespace["video"])).permute(3, 0, 1, 2)[None].float() / 255
    want = torch_per_frame(net, video)  # [1, 50, classes]
    np.testing.assert_allclose(namespace["logits"], want[0, -1], rtol=0, atol=ATOL)
    assert printed[-1] == f"frame 50: {net.labels[int(want[0, -1].argmax())]} ({float(torch.softmax(torch.from_numpy(want[0, -1]), 0).max()):.2f})"
    # the batch example: camera 2 restarted at step 4, so after step 9 it has seen 5 frames
    assert namespace["batch_state"]["state_head_pool_frame_count"].tolist() == [10, 10, 5, 10]
    restarted = video[:, :, [(index + 2) % 50 for index in range(5, 10)]]
    np.testing.assert_allclose(namespace["batch_logits"][2], torch_per_frame(net, restarted)[0, -1], rtol=0, atol=ATOL)

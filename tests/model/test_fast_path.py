"""Every path ``model.optimize.for_streaming`` can pick equals the eager model, frame by frame."""

from __future__ import annotations

import logging

import pytest
import torch

import model
from model.frame_graph import can_fuse
from model.optimize import TOLERANCE, FrameGraph, StreamStep, TracedFrameGraph, for_streaming, tolerance
from tests.model.helpers import randomized
from tests.needs import require

FRAMES = 20


def staggered_state(net: model.MoViNet, batch: int, height: int, width: int, seed: int) -> model.State:
    """``batch`` sessions that have seen 0, 3, 6, ... frames (different stream positions)."""
    generator = torch.Generator().manual_seed(seed)
    states = []
    with torch.no_grad():
        for index in range(batch):
            state = net.init_state(1, height, width)
            for _ in range(3 * index):
                _, state = net(torch.rand(1, 3, 1, height, width, generator=generator), state)
            states.append(state)
    return model.stack_states(states)


def max_logit_difference(step, net: model.MoViNet, batch: int, height: int, width: int, seed: int = 0) -> float:
    """Largest |logit difference| over FRAMES frames between ``step`` and the eager ``net``."""
    reference = staggered_state(net, batch, height, width, seed)
    candidate = {key: value.clone() for key, value in reference.items()}
    generator = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    with torch.no_grad():
        for _ in range(FRAMES):
            frames = torch.rand(batch, 3, 1, height, width, generator=generator)
            want, reference = net(frames, reference)
            got, candidate = step(frames, candidate)
            assert got.shape == want.shape and got.dtype == torch.float32
            worst = max(worst, (got - want).abs().max().item())
    assert candidate.keys() == reference.keys()
    for key, value in reference.items():
        assert candidate[key].shape == value.shape, key
    return worst


@pytest.fixture(scope="module")
def net() -> model.MoViNet:
    # positional encoding on, so the A3-A5 stream path (pos_enc_frame_count) is covered too
    return randomized("movinet_test_stream", use_positional_encoding=True)


@pytest.mark.parametrize("backend", ["graph", "graph-trace", "trace", "eager"])
@pytest.mark.parametrize("batch", [1, 3])
def test_every_eager_path_equals_the_model(net, backend, batch):
    step = for_streaming(net, precision="fp32", backend=backend, height=32, width=32, compile="off")
    assert step.backend == backend and step.precision == "fp32"
    assert max_logit_difference(step, net, batch, 32, 32) <= TOLERANCE["fp32"] == 1e-4


def graph_with(net: model.MoViNet, size: tuple[int, int], ops: str, dtype: torch.dtype = torch.float32) -> FrameGraph:
    """The FrameGraph with plain ops, oneDNN's fused ops at every batch, or those and the temporal
    conv as one oneDNN conv (the bf16 default on a CPU)."""
    graph = FrameGraph(net, *size, dtype, fused=ops != "plain").eval()
    graph.fuse_from_pixels = 0
    for block in graph.blocks:
        block.temporal_conv = ops == "fused+temporal-conv"
    return graph


OPS = ["plain", "fused", "fused+temporal-conv"]


@pytest.mark.parametrize("ops", OPS)
@pytest.mark.parametrize("size", [(33, 30), (17, 17)])
def test_frame_graph_handles_odd_sizes_and_tf_padding(net, size, ops):
    """Odd and even sizes give TF SAME pads at the start, at the end or both; with the convs and
    matmuls as oneDNN's fused ops (on a CPU from fuse_from_pixels a call) and as plain ops."""
    assert max_logit_difference(graph_with(net, size, ops), net, 3, *size) <= 1e-4


def test_the_fused_ops_run_from_a_batch_size(net):
    graph = FrameGraph(net, 32, 32).eval()
    assert graph.fused and graph.fuse_from_pixels > 0

    def calls(batch: int) -> dict[str, int]:
        with torch.profiler.profile() as profile, torch.no_grad():
            graph(torch.rand(batch, 3, 1, 32, 32), net.init_state(batch, 32, 32))
        return {event.key: event.count for event in profile.key_averages()}

    small = -(-graph.fuse_from_pixels // (32 * 32)) - 1
    assert "mkldnn::_convolution_pointwise" not in calls(small) and "aten::conv2d" in calls(small)
    assert "mkldnn::_convolution_pointwise" in calls(small + 1)


def test_a_cpu_that_refuses_the_fused_ops_gets_the_plain_ones(net, monkeypatch, caplog):
    """for_streaming checks the fused ops too (at its small check batch they would not run): where
    oneDNN refuses them (bf16 on a CPU without AVX-512), the graph runs plain ops."""
    from model import frame_graph

    plain = frame_graph._Spatial.forward

    def refusing(self, x, fuse=False):
        if fuse:
            raise RuntimeError("bf16 path needs the cpu support avx_ne_convert or avx512bw")
        return plain(self, x, fuse)

    monkeypatch.setattr(frame_graph._Spatial, "forward", refusing)
    with caplog.at_level(logging.WARNING, logger="model.optimize"):
        step = for_streaming(net, precision="fp32", backend="graph", height=32, width=32, compile="off")
    assert step.backend == "graph" and "fused ops fail here" in caplog.text
    assert max_logit_difference(step, net, 3, 32, 32) <= 1e-4


def test_the_fused_graph_puts_activations_and_residuals_into_onednn_ops(net):
    graph = graph_with(net, (32, 32), "fused+temporal-conv")
    with torch.profiler.profile() as profile, torch.no_grad():
        graph(torch.rand(2, 3, 1, 32, 32), net.init_state(2, 32, 32))
    calls = {event.key: event.count for event in profile.key_averages()}
    temporal = sum(1 for block in graph.blocks if block.buffer_frames)
    assert temporal
    # the stem, each block's spatial conv and each temporal conv over a stream buffer
    assert calls.get("mkldnn::_convolution_pointwise") == 1 + len(graph.blocks) + temporal, calls
    assert "aten::conv2d" not in calls, calls
    assert calls.get("aten::linear") == 2 * len(graph.blocks), calls  # only the SE's, on (B, C) vectors
    assert "aten::addcmul" not in calls, calls


@pytest.mark.parametrize("ops", OPS)
def test_frame_graph_at_a0_depth(ops):
    """The real A0 layout (every stage, 5-frame temporal kernels), at a small frame size."""
    a0 = randomized("movinet_a0_stream", num_classes=11)
    assert max_logit_difference(graph_with(a0, (48, 48), ops), a0, 3, 48, 48) <= 1e-4


def test_bf16_graph_is_within_its_tolerance(net):
    step = for_streaming(net, precision="bf16", backend="graph", height=32, width=32, compile="off")
    assert step.precision == "bf16"
    state = step.init_state(2)
    assert all(state[key].dtype == torch.bfloat16 for key in state if key.endswith("stream_buffer"))
    assert state["state_head_pool_buffer"].dtype == torch.float32  # running sums stay float32
    # random weights give logits well under 1, so the bound is TOLERANCE["bf16"] itself
    assert max_logit_difference(step, net, 3, 32, 32) <= tolerance("bf16", 0.5) == TOLERANCE["bf16"]
    for ops in OPS:  # and with oneDNN's fused ops at every batch
        fused = StreamStep(net, 32, 32, "bf16", "graph", graph_with(net, (32, 32), ops, torch.bfloat16), [])
        assert max_logit_difference(fused, net, 3, 32, 32) <= TOLERANCE["bf16"], ops


@pytest.mark.slow
def test_compiled_path_equals_the_model_at_its_sizes_and_others(net):
    """Static graphs for batch 1 and 2; a batch of 3 runs on the eager graph."""
    pytest.importorskip("torch._inductor")
    step = for_streaming(net, precision="fp32", backend="compiled", height=32, width=32,
                         compile="now", batch_sizes=(1, 2))
    if step.compile_error:  # inductor needs a C++ compiler (gcc is on every CI machine)
        require(f"no working compiler here: {step.compile_error}")
    assert step.backend == "compiled" and step.compiled_batch_sizes == (1, 2)
    for batch in (1, 3):
        assert max_logit_difference(step, net, batch, 32, 32) <= 1e-4, batch
    assert all(check.passed for check in step.checks)
    # frames in another layout miss the graph's guards: that call runs eagerly, never recompiles
    frames = torch.rand(1, 3, 1, 32, 32).transpose(-1, -2)
    state = step.init_state(1)
    want, _ = net(frames, net.init_state(1, 32, 32))
    got, _ = step(frames, state)
    assert torch.allclose(got, want, atol=1e-4)


def test_a_batch_runs_on_the_graph_compiled_for_its_size_else_on_the_eager_graph():
    from model.stream_step import _BySize

    calls = []

    def graph(name):
        return lambda frames, state: calls.append((name, frames.shape[0])) or (frames, state)

    run = _BySize({1: graph("compiled-1"), 8: graph("compiled-8")}, graph("eager"))
    for batch in (1, 8, 5, 13, 64):
        run(torch.zeros(batch, 3, 1, 2, 2), {})
    assert calls == [("compiled-1", 1), ("compiled-8", 8), ("eager", 5), ("eager", 13), ("eager", 64)]


def test_a_path_that_disagrees_gives_way_with_a_warning(net, monkeypatch, caplog):
    original = FrameGraph.forward

    def off_by_a_little(self, frames, state):
        logits, new_state = original(self, frames, state)
        return logits + 1e-3, new_state

    monkeypatch.setattr(FrameGraph, "forward", off_by_a_little)
    with caplog.at_level(logging.WARNING, logger="model.optimize"):
        step = for_streaming(net, precision="fp32", height=32, width=32, compile="off")
    assert step.backend == "trace"
    assert "graph path" in caplog.text and "differs from the reference" in caplog.text
    graph_check = step.describe()["checks"][0]
    assert graph_check["backend"] == "graph" and not graph_check["passed"]


def test_step_accepts_model_states_and_leaves_them_alone(net):
    step = for_streaming(net, precision="fp32", backend="graph", height=32, width=32, compile="off")
    state = net.init_state(2, 32, 32)  # contiguous float32, as stack_states / state_from_bytes give
    before = {key: value.clone() for key, value in state.items()}
    frames = torch.rand(2, 3, 1, 32, 32)
    logits, new_state = step(frames, state)
    for key, value in state.items():
        assert torch.equal(value, before[key]), key
    want, _ = net(frames, state)
    assert torch.allclose(logits, want, atol=1e-5)
    fresh, _ = step(frames, None)
    assert torch.allclose(fresh, logits, atol=1e-6)
    # the step's states go through the usual helpers: split, stack, bytes
    parts = model.split_states(new_state)
    restored = model.state_from_bytes(model.state_to_bytes(model.stack_states(parts)))
    again, _ = step(frames, restored)
    reference, _ = net(frames, {key: value.contiguous() for key, value in new_state.items()})
    assert torch.allclose(again, reference, atol=1e-5)


def test_a_server_gets_the_traced_graph_for_any_batch(net):
    """shared_gil (the service's choice) puts graph-trace first: two traces, plain ops and (from
    fuse_from_pixels a call) oneDNN's fused ones; traced at batch 2, they run every batch size,
    sessions at different positions, equal to the model, in fp32 and within bf16's bound."""
    step = for_streaming(net, precision="fp32", height=32, width=32, compile="off", shared_gil=True)
    traced = step._run
    assert step.backend == "graph-trace" and isinstance(traced, TracedFrameGraph)
    assert isinstance(traced.plain, torch.jit.ScriptModule) and isinstance(traced.fused_trace, torch.jit.ScriptModule)
    assert traced.fused == can_fuse(torch.device("cpu"))
    traced.fuse_from_pixels = 5 * 32 * 32  # the fused trace from 5 sessions on
    for batch in (1, 5, 17):
        with torch.profiler.profile() as profile:
            assert max_logit_difference(step, net, batch, 32, 32) <= 1e-4
        ops = {event.key for event in profile.key_averages()}
        assert ("mkldnn::_convolution_pointwise" in ops) == (batch >= 5 and traced.fused)
        assert ("mkldnn::_linear_pointwise" in ops) == (batch >= 5 and traced.fused)
    bf16 = for_streaming(net, precision="bf16", height=32, width=32, compile="off", shared_gil=True)
    assert bf16.backend == "graph-trace" and bf16.checks[-1].passed


def test_a_trace_of_the_fused_ops_that_fails_leaves_the_plain_trace(net, monkeypatch, caplog):
    """A torch whose tracer refuses the fused calls: the plain ops' trace serves every batch."""
    import model.optimize as optimize

    real_trace = torch.jit.trace

    def refuses_fused(graph, inputs, **kwargs):
        if graph.fuse_from_pixels == 0:
            raise RuntimeError("unsupported input list type")
        return real_trace(graph, inputs, **kwargs)

    monkeypatch.setattr(optimize.torch.jit, "trace", refuses_fused)
    with caplog.at_level(logging.WARNING, logger="model.optimize"):
        step = for_streaming(net, precision="fp32", height=32, width=32, compile="off", shared_gil=True)
    assert step.backend == "graph-trace" and not step._run.fused and "do not trace here" in caplog.text
    step._run.fuse_from_pixels = 0
    assert max_logit_difference(step, net, 3, 32, 32) <= 1e-4


def test_a_path_that_cannot_be_built_gives_way_with_a_warning(net, monkeypatch, caplog):
    import model.optimize as optimize

    def refused(*args, **kwargs):
        raise RuntimeError("this torch does not trace")

    monkeypatch.setattr(optimize, "trace_frame_graph", refused)
    with caplog.at_level(logging.WARNING, logger="model.optimize"):
        step = for_streaming(net, precision="fp32", height=32, width=32, compile="off", shared_gil=True)
    assert step.backend == "graph" and "graph-trace path (fp32)" in caplog.text and "cannot be built" in caplog.text
    failed = step.describe()["checks"][0]
    assert failed["backend"] == "graph-trace" and not failed["passed"]
    assert max_logit_difference(step, net, 3, 32, 32) <= 1e-4


def test_describe_says_what_runs(net):
    step = for_streaming(net, precision="fp32", height=32, width=32, compile="off")
    assert isinstance(step, StreamStep)
    info = step.describe()
    assert info["backend"] == "graph" and info["precision"] == "fp32"
    assert info["checks"][0]["passed"] and info["checks"][0]["max_abs_diff"] <= 1e-4
    with pytest.raises(ValueError, match="built for 32x32"):
        step(torch.rand(1, 3, 1, 16, 16), None)


def test_bad_arguments_are_value_errors(net):
    with pytest.raises(ValueError, match="backend"):
        for_streaming(net, backend="tensorrt", height=32, width=32)
    with pytest.raises(ValueError, match="precision"):
        for_streaming(net, precision="fp16", height=32, width=32)
    with pytest.raises(ValueError, match="stream"):
        for_streaming(randomized("movinet_test_base"), height=32, width=32)

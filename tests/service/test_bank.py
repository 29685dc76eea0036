"""The state bank equals model.streaming.WindowedStream: sessions at different positions in one
forward, window resets, unbounded rows, checkpoints in and out of a bank."""

from __future__ import annotations

import pytest
import torch

import model
from model.streaming import Slot, TumblingStream, WindowedStream
from service.worker.bank import StateBank

SIZE = 32


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return model.create_model("movinet_test_stream", num_classes=7).eval()


def frames(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("window", "tumbling"), [(6, False), (6, True), (None, False)])
def test_sessions_at_different_positions_equal_each_alone(net, window, tumbling):
    clips = {name: frames(n, seed) for name, n, seed in (("a", 17, 1), ("b", 11, 2), ("c", 5, 3))}
    starts = {"a": 0, "b": 4, "c": 9}  # when each session joins the shared forwards
    bank = StateBank(net.init_state(1, SIZE, SIZE), window, capacity=2, tumbling=tumbling)  # grows as sessions join
    assert bank.rows_per_session == (2 if window and not tumbling else 1)
    streams, got = {}, {name: [] for name in clips}
    with torch.inference_mode():
        for tick in range(20):
            names = [n for n in clips if starts[n] <= tick < starts[n] + len(clips[n])]
            if not names:
                continue
            for name in names:
                streams.setdefault(name, bank.allocate())
            batch = torch.cat([clips[n][tick - starts[n]][None] for n in names])
            logits = bank.step([streams[n] for n in names], batch, net)
            for name, row in zip(names, logits, strict=True):
                got[name].append(row)
        for name, clip in clips.items():
            if window is None:
                state, alone = net.init_state(1, SIZE, SIZE), []
                for frame in clip:
                    out, state = net(frame[None], state)
                    alone.append(out[0])
            else:
                kind = TumblingStream if tumbling else WindowedStream
                stream, slot = kind(net, window=window), Slot(window=window)
                alone = [stream.step([slot], frame[None])[0] for frame in clip]
            torch.testing.assert_close(torch.stack(got[name]), torch.stack(alone), atol=1e-5, rtol=1e-4)


def test_the_fused_graph_in_a_bank_equals_the_model(net):
    """oneDNN's fused ops at every batch, the temporal conv leaving its new stream buffer as a view
    of its window: the bank gathers and scatters it like any state."""
    from model.optimize import StreamStep
    from tests.model.test_fast_path import graph_with

    step = StreamStep(net, SIZE, SIZE, "fp32", "graph", graph_with(net, (SIZE, SIZE), "fused+temporal-conv"), [])
    clips = {name: frames(9, seed) for name, seed in (("a", 4), ("b", 5))}
    bank = StateBank(step.init_state(1), None, capacity=1)
    streams = {name: bank.allocate() for name in clips}
    with torch.inference_mode():
        got = {name: [] for name in clips}
        for tick in range(9):
            names = list(clips) if tick >= 3 else ["a"]  # b joins later: other stream positions
            logits = bank.step([streams[n] for n in names], torch.cat([clips[n][tick][None] for n in names]), step)
            for name, row in zip(names, logits, strict=True):
                got[name].append(row)
        for name, clip in clips.items():
            state, alone = net.init_state(1, SIZE, SIZE), []
            for frame in (clip if name == "a" else clip[3:]):
                out, state = net(frame[None], state)
                alone.append(out[0])
            torch.testing.assert_close(torch.stack(got[name]), torch.stack(alone), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tumbling", [False, True])
def test_a_checkpointed_slot_goes_on_in_another_bank(net, tumbling):
    clip = frames(14, 7)
    window = 6
    first = StateBank(net.init_state(1, SIZE, SIZE), window, tumbling=tumbling)
    stream = first.allocate()
    with torch.inference_mode():
        before = [first.step([stream], f[None], net)[0] for f in clip[:7]]  # a tumbling one holds an answer now
        slot = Slot.from_bytes(first.to_slot(stream).to_bytes())  # through the checkpoint bytes
        assert (slot.held is not None) == tumbling
        second = StateBank(net.init_state(1, SIZE, SIZE), window, tumbling=tumbling)
        second.allocate()  # another session's rows first: the slot lands on other rows
        resumed = second.allocate()
        second.load_slot(resumed, slot)
        after = [second.step([resumed], f[None], net)[0] for f in clip[7:]]  # the 8th answers with it
        kind = TumblingStream if tumbling else WindowedStream
        reference, alone = kind(net, window=window), Slot(window=window)
        expected = [reference.step([alone], f[None])[0] for f in clip]
    torch.testing.assert_close(torch.stack(before + after), torch.stack(expected), atol=1e-5, rtol=1e-4)
    first.free(stream)
    assert not set(first.allocate().rows) & set(stream.rows)  # not before the next step ...
    first.collect()
    assert set(first.allocate().rows) == set(stream.rows)  # ... then freed rows are used again


def test_rows_gathered_and_scattered_keep_the_stream_buffers_layout():
    """A channels-last bank hands gathered rows over channels-last (the fast paths read them
    without another copy) with index_select's values, and scatters as index_copy_ does."""
    from service.worker.bank import _gather, _scatter

    rows = torch.randn(9, 4, 2, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    index = torch.tensor([7, 1, 4])
    gathered = _gather(rows, index)
    assert gathered.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(gathered, rows.index_select(0, index))
    fresh = torch.randn(3, 4, 2, 5, 6)
    expected = rows.clone().index_copy_(0, index, fresh)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        target = rows.clone(memory_format=torch.channels_last_3d)
        _scatter(target, index, fresh.contiguous(memory_format=layout))
        assert torch.equal(target, expected) and target.is_contiguous(memory_format=torch.channels_last_3d)
    plain = torch.randn(9, 3)  # any other tensor: index_select / index_copy_ as they are
    assert torch.equal(_gather(plain, index), plain[index])

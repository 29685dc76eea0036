import torch

from model.streaming import Slot, TumblingStream, WindowedStream

from .helpers import randomized


def test_windowed_batch_equals_each_session_alone_and_survives_serialisation():
    net = randomized("movinet_test_stream", use_positional_encoding=True)
    stream = WindowedStream(net, window=6)
    frames = torch.rand(14, 3, 3, 1, 32, 32)  # 14 steps, 3 sessions
    slots = [stream.new_slot() for _ in range(3)]
    batched = [stream.step(slots, frames[t]) for t in range(14)]
    alone = stream.new_slot()
    for t in range(14):
        if t == 9:  # a worker hands the session over through bytes
            alone = Slot.from_bytes(alone.to_bytes())
        out = stream.step([alone], frames[t, 1:2])
        assert torch.allclose(out[0], batched[t][1], atol=1e-5), t


def test_answer_depends_only_on_the_recent_window():
    net = randomized("movinet_test_stream")
    window = 6
    stream = WindowedStream(net, window=window)
    video = torch.rand(20, 3, 1, 32, 32)
    slot = stream.new_slot()
    outputs = [stream.step([slot], video[t : t + 1])[0] for t in range(20)]
    # Row 0 restarts every `window` frames, row 1 at window/2 + k*window; the answer comes from
    # the row that has seen more frames, so it equals a fresh stream over that row's frames.
    for t in range(window // 2, 20):
        starts = [s for s in range(0, t + 1) if s % window == 0 or (s >= window // 2 and (s - window // 2) % window == 0)]
        candidates = [s for s in starts if t - s + 1 <= window]
        start = min(candidates)
        with torch.no_grad():
            fresh, _ = net(video[start : t + 1].permute(1, 2, 0, 3, 4).reshape(1, 3, t + 1 - start, 32, 32))
        assert torch.allclose(outputs[t], fresh[0], atol=1e-5), (t, start)
        assert t + 1 - start <= window


def test_traced_frame_step_equals_the_eager_model_at_any_batch_size():
    from model.optimize import optimize_for_inference, trace_frame_step

    net = optimize_for_inference(randomized("movinet_test_stream", use_positional_encoding=True).eval())
    traced = trace_frame_step(net, 32, 32)
    eager_stream, traced_stream = WindowedStream(net, window=6), WindowedStream(net, window=6, forward=traced)
    for sessions in (1, 3, 5):  # traced at batch 2; windowed slots make batches of 1..2x sessions
        frames = torch.rand(9, sessions, 3, 1, 32, 32)
        eager_slots = [eager_stream.new_slot() for _ in range(sessions)]
        traced_slots = [traced_stream.new_slot() for _ in range(sessions)]
        for t in range(9):
            want = eager_stream.step(eager_slots, frames[t])
            got = traced_stream.step(traced_slots, frames[t])
            assert torch.allclose(got, want, atol=1e-5), (sessions, t)
        for a, b in zip(eager_slots, traced_slots, strict=True):
            for key, value in a.states[0].items():
                assert torch.allclose(b.states[0][key].float(), value.float(), atol=1e-5), key


def test_a_tumbling_stream_holds_the_last_answer_of_the_window_before_in_its_first_half():
    net = randomized("movinet_test_stream")
    window = 6
    video = torch.rand(20, 1, 3, 1, 32, 32)
    stream = TumblingStream(net, window=window)
    slot = stream.new_slot()
    got = []
    for t in range(20):
        if t == 13:  # through the checkpoint bytes, with the held answer
            slot = Slot.from_bytes(slot.to_bytes())
        got.append(stream.step([slot], video[t])[0])
    fresh = {}
    for start in range(0, 20, window):  # what a stream reset at each window's start gives
        state = net.init_state(1, 32, 32)
        for t in range(start, min(start + window, 20)):
            fresh[t], state = net(video[t], state)
    for t in range(20):
        young = t >= window and t % window < window // 2 - 1  # fewer than window // 2 frames seen
        want = fresh[t - t % window - 1] if young else fresh[t]
        assert torch.allclose(got[t], want[0], atol=1e-5), t

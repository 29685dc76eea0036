import torch

from model.streaming import Slot, WindowedStream

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

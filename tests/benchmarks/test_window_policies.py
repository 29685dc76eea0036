"""The sliding window policy of benchmarks/window_policies.py computes what it says."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from window_policies import SlidingStream  # noqa: E402

from model import create_model  # noqa: E402
from tests.model.helpers import randomized  # noqa: E402


def test_a_sliding_stream_within_its_window_is_the_plain_stream():
    net = randomized("movinet_test_stream")
    video = torch.rand(6, 2, 3, 1, 32, 32)
    stream = SlidingStream(net, window=8)
    slots = [stream.new_slot() for _ in range(2)]
    state = net.init_state(2, 32, 32)
    for t in range(6):
        expected, state = net(video[t], state)
        assert torch.allclose(stream.step(slots, video[t]), expected, atol=1e-5), t


def test_a_sliding_pool_averages_the_last_window_frames():
    """A forward whose head pool adds frame t's value t: the logit is the mean of the last window."""
    net = create_model("movinet_test_stream")
    window = 4

    def forward(frames, state):
        value = frames[:, 0, 0, 0, 0]
        sums = state["state_head_pool_buffer"] + value[:, None, None, None, None]
        count = state["state_head_pool_frame_count"] + 1
        new = dict(state, state_head_pool_buffer=sums, state_head_pool_frame_count=count)
        return (sums.flatten(1)[:, :1] / count[:, None]), new

    stream = SlidingStream(net, window=window, forward=forward)
    slot = stream.new_slot()
    for t in range(10):
        frame = torch.full((1, 3, 1, 32, 32), float(t))
        got = float(stream.step([slot], frame)[0, 0])
        last = range(max(0, t - window + 1), t + 1)
        assert abs(got - sum(last) / len(last)) < 1e-5, (t, got)

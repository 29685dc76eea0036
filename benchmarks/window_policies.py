"""Window policies that run one stream row per session instead of the service's two, measured
for accuracy on the evaluation's continuous video.

    python benchmarks/window_policies.py [--minutes 10] [--windows 10] [--policies windowed sliding tumbling]

The service's ``windowed`` policy (:class:`model.streaming.WindowedStream`) runs two staggered
streams per session, so a 5-fps session costs 10 row-forwards a second. The two candidates here
need one, which would double the sessions one inference thread carries:

* ``sliding``: the stream is never reset, and each pool (the squeeze-excitations' and the
  head's) averages the last ``window`` frames instead of every frame since the start. Beside
  the model's state the stream keeps what each of the last ``window - 1`` frames added to each
  pool; before a frame a pool's sum is set to theirs and its count to how many there are, so the
  model's own step gives the mean over them and the frame.
* ``tumbling`` (:class:`model.streaming.TumblingStream`, the service's ``tumbling`` policy): one
  stream reset every ``window`` frames; while it has seen fewer than half a window, the label is
  the last one of the window before (held).

Each runs the bundled motion model over the same 10-minute video (a change of motion every
3-8 s, ``model.training.evaluate.evaluate_long``, the seed ``python -m model.evaluate`` uses) and
prints accuracy over all frames and over the settled ones (the motion has lasted a window), and
how long a change takes to be recognised.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import model  # noqa: E402
from model.movinet import MoViNet, State  # noqa: E402
from model.state import split_states, stack_states  # noqa: E402
from model.streaming import Slot, TumblingStream, WindowedStream  # noqa: E402
from model.training.evaluate import evaluate_long  # noqa: E402

SLIDING = "sliding/"
_POOL, _COUNT = "_pool_buffer", "_pool_frame_count"


def pool_keys(state: State) -> list[str]:
    """The running sums of a stream state's pools (each beside its ``..._pool_frame_count``)."""
    return [key for key in state if key.endswith(_POOL) and not key.startswith(SLIDING)]


class _OneRow:
    def __init__(self, net: MoViNet, window: int, forward: Callable | None = None) -> None:
        if not net.causal or window < 2:
            raise ValueError("a stream (causal) model and a window of at least 2 frames")
        self.net, self.forward, self.window = net, forward or net, window

    def new_slot(self) -> Slot:
        return Slot(window=self.window)

    @staticmethod
    def _frames(slots: list[Slot], frames: Tensor) -> Tensor:
        frames = frames[:, :, None] if frames.ndim == 4 else frames
        if frames.ndim != 5 or frames.shape[0] != len(slots) or frames.shape[2] != 1:
            raise ValueError(f"frames must be [N, 3, 1, H, W] for N={len(slots)} slots, got {list(frames.shape)}")
        return frames


class SlidingStream(_OneRow):
    """One row per session, never reset; its pools over the last ``window`` frames."""

    @torch.no_grad()
    def step(self, slots: list[Slot], frames: Tensor) -> Tensor:
        frames = self._frames(slots, frames)
        for slot in slots:
            if slot.states[0] is None:
                fresh = self.net.init_state(1, *frames.shape[-2:])
                for key in pool_keys(fresh):
                    fresh[SLIDING + key] = fresh[key].new_zeros((1, self.window - 1, math.prod(fresh[key].shape[1:])))
                slot.states[0] = fresh
        state = stack_states([slot.states[0] for slot in slots])
        held = torch.tensor([min(slot.frames_seen, self.window - 1) for slot in slots])
        inputs = {key: value for key, value in state.items() if not key.startswith(SLIDING)}
        for key in pool_keys(inputs):
            inputs[key] = state[SLIDING + key].sum(dim=1).view_as(inputs[key])
            count = key[: -len(_POOL)] + _COUNT
            inputs[count] = held.to(inputs[count].dtype).view_as(inputs[count])
        logits, new = self.forward(frames, inputs)
        for key in pool_keys(inputs):  # what this frame added to each pool joins the frames held
            added = (new[key] - inputs[key]).flatten(1)[:, None]
            new[SLIDING + key] = torch.cat([state[SLIDING + key][:, 1:], added], dim=1)
        for slot, row in zip(slots, split_states(new), strict=True):
            slot.states[0] = row
            slot.frames_seen += 1
        return logits


POLICIES = {"windowed": (WindowedStream, 2), "sliding": (SlidingStream, 1), "tumbling": (TumblingStream, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the continuous video")
    parser.add_argument("--windows", type=int, nargs="+", default=[10], help="window lengths in frames")
    parser.add_argument("--policies", nargs="+", choices=sorted(POLICIES), default=["windowed", "sliding", "tumbling"])
    parser.add_argument("--seed", type=int, default=20_002, help="the video (python -m model.evaluate: 20002)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = model.create_model("movinet_a0_stream", weights="motion").eval()
    rows = []
    print("| policy | window | rows a session | accuracy, all frames | settled frames | changes missed | delay median / p90 |")
    print("|---|---|---|---|---|---|---|")
    for window in args.windows:
        for name in args.policies:
            kind, per_session = POLICIES[name]
            result = evaluate_long(net, args.minutes, args.seed, window=window, stream=kind(net, window=window))
            result.update(policy=name, rows_per_session=per_session)
            rows.append(result)
            print(f"| {name} | {window} | {per_session} | {result['accuracy_all_frames']:.1%} | "
                  f"{result['accuracy_settled_frames']:.1%} | {result['changes_never_recognised']} of {result['changes']} | "
                  f"{result['delay_median_s']} / {result['delay_p90_s']:.2f} s |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

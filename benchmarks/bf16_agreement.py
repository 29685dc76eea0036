"""How often the bf16 stream paths give the fp32 model's label, on the bundled motion model.

    python benchmarks/bf16_agreement.py [--sessions 8] [--frames 250] [--window 10] [--compiled]

Renders ``--sessions`` continuous motion videos of held-out photographs (3-8 s segments, the
model's 64x64 at 5 fps, ``model.training.datasets.motion``), streams them frame by frame as the
service does (``WindowedStream``, all sessions in one batch per step) through the fp32 model and
through each bf16 path, and prints per path: top-1 agreement with fp32 over every frame, the
largest and the 99th-percentile |probability difference|, and both paths' accuracy against the
videos' labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import model  # noqa: E402
from model.optimize import for_streaming  # noqa: E402
from model.streaming import WindowedStream  # noqa: E402
from model.training.datasets.motion import MotionConfig, iter_sequence, random_segments  # noqa: E402


def render(sessions: int, frames: int, size: int, fps: float) -> tuple[torch.Tensor, np.ndarray]:
    """``[frames, sessions, 3, 1, size, size]`` float frames and ``[frames, sessions]`` labels."""
    config = MotionConfig(size=size, fps=fps, split="heldout")
    video = np.empty((frames, sessions, size, size, 3), dtype=np.uint8)
    labels = np.empty((frames, sessions), dtype=np.int64)
    for session in range(sessions):
        segments = random_segments(100 + session, frames / fps + 10.0, seconds=(3.0, 8.0), config=config)
        for index, (frame, label) in enumerate(iter_sequence(segments, 100 + session, config)):
            if index == frames:
                break
            video[index, session], labels[index, session] = frame, label
    tensor = torch.from_numpy(video).permute(0, 1, 4, 2, 3).float().div_(255.0)[:, :, :, None]
    return tensor, labels


def stream(step, net, video: torch.Tensor, window: int) -> torch.Tensor:
    """Probabilities ``[frames, sessions, classes]`` of ``step`` run as the service runs it."""
    windowed = WindowedStream(net, window=window, forward=step)
    slots = [windowed.new_slot() for _ in range(video.shape[1])]
    out = []
    with torch.no_grad():
        for frame in video:
            out.append(windowed.step(slots, frame).float().softmax(-1))
    return torch.stack(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250, help="per session")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--compiled", action="store_true", help="also the compiled bf16 path (minutes to build)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    net = model.create_model("movinet_a0_stream", weights="motion").eval()
    size = net.info.input_size
    video, labels = render(args.sessions, args.frames, size, net.info.frame_rate)
    reference = stream(net, net, video, args.window)
    truth = torch.from_numpy(labels)
    paths = {"graph-bf16": for_streaming(net, precision="bf16", backend="graph", compile="off"),
             "graph-fp32": for_streaming(net, precision="fp32", backend="graph", compile="off")}
    if args.compiled:
        paths["compiled-bf16"] = for_streaming(net, precision="bf16", backend="compiled", compile="now",
                                               batch_sizes=(1, 2 * args.sessions))
    results = {"frames": int(reference.shape[0] * reference.shape[1]), "window": args.window,
               "fp32_accuracy": round((reference.argmax(-1) == truth).float().mean().item(), 4), "paths": {}}
    for name, step in paths.items():
        probs = stream(step, net, video, args.window)
        diff = (probs - reference).abs().amax(-1).flatten()
        differ = (probs.argmax(-1) != reference.argmax(-1)).flatten()
        top2 = reference.flatten(0, 1).topk(2, dim=-1).values
        changes = torch.zeros_like(truth, dtype=torch.bool)
        changes[1:] = truth[1:] != truth[:-1]  # a change of motion in the video ...
        recent = torch.stack([changes[max(0, t - args.window + 1): t + 1].any(0) for t in range(len(changes))])
        results["paths"][name] = {
            "backend": step.backend,
            "top1_agreement": round((probs.argmax(-1) == reference.argmax(-1)).float().mean().item(), 5),
            "max_prob_diff": round(diff.max().item(), 5),
            "p99_prob_diff": round(diff.quantile(0.99).item(), 5),
            "accuracy": round((probs.argmax(-1) == truth).float().mean().item(), 4),
            "frames_differing": int(differ.sum()),
            # fp32's top-1 minus top-2 probability where the labels differ, and whether a change
            # of motion lies within the window before that frame
            "fp32_margins_where_differing": [round(m, 4) for m in (top2[differ, 0] - top2[differ, 1]).tolist()],
            "within_a_window_of_a_change": recent.flatten()[differ].tolist(),
        }
        print(json.dumps({name: results["paths"][name]}), flush=True)
    print(json.dumps(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

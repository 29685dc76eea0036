"""Section 3 of ``benchmarks/gpu.py``: fp32 against bf16 autocast on a real video.

This module owns the test clip (the committed ``tests/assets/motion_test.mp4`` when PyAV can read
it, else a generated panning scene) and the comparison: top-1 agreement over every (session,
frame) and the largest probability difference, with trained weights when they are on the machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

import model

from .harness import Budget, Device, describe, inference_model, out_of_memory

ROOT = Path(__file__).resolve().parents[2]
TEST_VIDEO = ROOT / "tests" / "assets" / "motion_test.mp4"


def test_video(size: int, short_side: int, frames: int) -> tuple[torch.Tensor, str]:
    """float [3, T, size, size]: the committed test video when PyAV can read it, else a generated one."""
    from model.preprocess import preprocess_frames

    try:
        import av

        with av.open(str(TEST_VIDEO)) as container:
            rgb = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(frames), container.decode(video=0))]
        return preprocess_frames(np.stack(rgb), size, short_side), f"{TEST_VIDEO.name} ({len(rgb)} frames)"
    except Exception:  # no PyAV, no file: a textured scene panning and zooming
        rng = np.random.default_rng(0)
        scene = rng.integers(0, 256, (short_side * 2, short_side * 3, 3), dtype=np.uint8)
        scene = np.repeat(np.repeat(scene[::8, ::8], 8, 0), 8, 1)  # blocks, not noise
        rgb = [scene[t : t + short_side, 2 * t : 2 * t + short_side] for t in range(frames)]
        return preprocess_frames(np.stack(rgb), size, short_side), f"generated ({frames} frames)"


def agreement_section(args, device: Device, budget: Budget) -> list[dict]:
    rows = []
    for short in args.models:
        name = f"movinet_{short}_stream"
        if budget.left() <= 0:
            rows.append({"model": name, "status": "skipped: time"})
            continue
        try:
            rows.append(agreement_of(name, args, device, budget))
        except Exception as error:  # noqa: BLE001 (recorded in the table; the run goes on)
            rows.append({"model": name, "status": "oom" if out_of_memory(error) else describe(error)})
        print(f"[gpu.py] agreement {rows[-1]}", file=sys.stderr, flush=True)
        device.free()
    return rows


def agreement_of(name: str, args, device: Device, budget: Budget) -> dict:
    """fp32 and bf16 softmax over ``sessions`` x ``frames`` of one video, compared."""
    frames = 6 if args.quick else 120
    sessions = 2 if args.quick else 16
    tags = model.available_weights(name)
    weights = next((tag for tag in ("kinetics600", "motion") if tag in tags), None)
    net, _ = inference_model(name, device, weights, perturb=True)
    size = args.size or net.info.input_size
    clip, source = test_video(size, max(size, net.info.eval_min_size), frames)
    # session i sees the video from its frame i on (looped), so the batch holds different scenes
    video = torch.stack([clip.roll(-index, dims=1) for index in range(sessions)]).to(device.name)
    probs = {}
    started = time.perf_counter()
    for precision in ("fp32", "bf16"):
        state, out = net.init_state(sessions, size, size), []
        with torch.inference_mode(), device.autocast(precision):
            for t in range(frames):
                if budget.left() <= 0 and t > 0:
                    break
                logits, state = net(video[:, :, t : t + 1], state)
                out.append(torch.softmax(logits.float(), dim=-1))
        probs[precision] = torch.stack(out, dim=1)  # (sessions, T, classes)
    steps = min(probs["fp32"].shape[1], probs["bf16"].shape[1])
    fp32, bf16 = probs["fp32"][:, :steps], probs["bf16"][:, :steps]
    return {
        "model": name, "weights": weights or "random (perturbed)", "video": source, "size": size,
        "sessions": sessions, "frames": steps,
        "top1_agreement": round(float((fp32.argmax(-1) == bf16.argmax(-1)).float().mean()), 4),
        "max_prob_diff": round(float((fp32 - bf16).abs().max()), 5),
        "seconds": round(time.perf_counter() - started, 1), "status": "ok",
    }

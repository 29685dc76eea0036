"""Write a synthetic camera-motion video and its per-frame ground truth.

    python tools/make_test_video.py OUT.mp4 --segments "pan left:3,zoom in:3,static:2" \\
        --fps 25 --size 320x240 --seed 1 [--y4m OUT.y4m] [--codec h264|vp8]

The video (H.264 in .mp4, VP8 in .webm) and an optional raw yuv420p ``.y4m`` (what Chromium's
``--use-file-for-fake-video-capture`` reads) come from one pass over the frames, so a ten-minute
``--duration 600`` video never sits in memory. ``OUT.json`` holds fps, size, class names, the
segments and one label per frame. It prints what it wrote: each file with its size, and the
video's duration. Motion speeds are in real units (frame short sides per second,
degrees per second), so the video resampled to the model's rate and size matches the training clips.
The rendering lives in :mod:`model.training.datasets.motion` and the encoding in
:mod:`model.training.datasets.video`; this file only parses and writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.training.datasets.motion import (  # noqa: E402
    CLASS_INDEX,
    CLASSES,
    PHOTO_FILES,
    PROCEDURAL,
    MotionConfig,
    clip_source,
    iter_sequence,
    random_segments,
    segment_frames,
)
from model.training.datasets.video import VIDEO_FORMATS, VideoWriter  # noqa: E402


def parse_segments(text: str) -> list[tuple[int, float]]:
    """``"pan left:3,zoom in:2.5"`` -> ``[(1, 3.0), (5, 2.5)]``; a label may also be its index."""
    segments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, seconds = item.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"segment {item!r} is not 'label:seconds'")
        name = name.strip()
        label = int(name) if name.isdigit() else CLASS_INDEX.get(name)
        if label is None or not 0 <= label < len(CLASSES):
            raise argparse.ArgumentTypeError(f"unknown class {name!r}; choose from {', '.join(CLASSES)}")
        segments.append((label, float(seconds)))
    if not segments:
        raise argparse.ArgumentTypeError("no segments given")
    return segments


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT")
    return int(width), int(height)


def ground_truth(segments: list[tuple[int, float]], config: MotionConfig, seed: int) -> dict:
    bounds = segment_frames(segments, config.fps)
    frame_labels = [
        label for (label, _), (start, end) in zip(segments, bounds, strict=True) for _ in range(start, end)
    ]
    return {
        "fps": config.fps,
        "size": [config.width, config.height],
        "classes": list(CLASSES),
        "seed": seed,
        "split": config.split,
        "source": clip_source(seed, config),
        "num_frames": len(frame_labels),
        "segments": [
            {
                "label": label,
                "name": CLASSES[label],
                "start_frame": start,
                "end_frame": end,
                "start_s": start / config.fps,
                "end_s": end / config.fps,
            }
            for (label, _), (start, end) in zip(segments, bounds, strict=True)
        ],
        "frame_labels": frame_labels,
    }


CODEC_NAMES = {"h264": "H.264", "vp8": "VP8"}


def human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.1f} MiB"


def report(args: argparse.Namespace, truth: dict, codec: str) -> list[str]:
    """One line per file written: what it is, its size, the video's duration and frames."""
    seconds, frames = truth["num_frames"] / truth["fps"], truth["num_frames"]
    video = f"{truth['size'][0]}x{truth['size'][1]}, {seconds:.2f} s at {truth['fps']:g} fps ({frames} frames)"
    lines = [f"wrote {args.output}  {CODEC_NAMES.get(codec, codec)}, {video}, {human_bytes(args.output.stat().st_size)}"]
    if args.y4m is not None:
        lines.append(f"wrote {args.y4m}  raw yuv420p, {video}, {human_bytes(args.y4m.stat().st_size)}")
    labels = ", ".join(f"{s['name']} {s['start_s']:.2f}-{s['end_s']:.2f} s" for s in truth["segments"][:6])
    more = f" and {len(truth['segments']) - 6} more" if len(truth["segments"]) > 6 else ""
    json_path = args.output.with_suffix(".json")
    lines.append(f"wrote {json_path}  ground truth, {len(truth['segments'])} segment{'s' if len(truth['segments']) > 1 else ''} ({labels}{more}), "
                 f"{human_bytes(json_path.stat().st_size)}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="video file: .mp4 (H.264), .webm (VP8) or .mkv")
    program = parser.add_mutually_exclusive_group(required=True)
    program.add_argument("--segments", type=parse_segments, help='e.g. "pan left:3,zoom in:3,static:2"')
    program.add_argument("--duration", type=float, help="seconds of random segments instead")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="WIDTHxHEIGHT, even numbers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--split", choices=["train", "heldout"], default="heldout")
    parser.add_argument("--source", choices=sorted(PHOTO_FILES) + [PROCEDURAL], help="force a picture")
    parser.add_argument("--codec", choices=["h264", "vp8"], help="default: from the file suffix")
    parser.add_argument("--quality", type=int, help="encoder CRF (lower is better; default 23 / 10)")
    parser.add_argument("--y4m", type=Path, help="also write raw yuv420p y4m here")
    parser.add_argument("--clean", action="store_true", help="no noise, blur, distractors or JPEG")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    width, height = args.size
    config = MotionConfig(size=(width, height), fps=args.fps, split=args.split, source=args.source)
    if args.clean:
        config = config.without_nuisances()
    segments = args.segments or random_segments(args.seed, args.duration, config=config)
    truth = ground_truth(segments, config, args.seed)

    writers = [VideoWriter(args.output, args.fps, width, height, codec=args.codec, quality=args.quality)]
    codec = args.codec or VIDEO_FORMATS[args.output.suffix.lower()].default_codec  # the writer checked it
    if args.y4m is not None:
        writers.append(VideoWriter(args.y4m, args.fps, width, height))
    try:
        for index, (frame, label) in enumerate(iter_sequence(segments, args.seed, config)):
            if label != truth["frame_labels"][index]:
                raise RuntimeError(f"frame {index}: renderer label {label} != ground truth")
            for writer in writers:
                writer.write(frame)
    finally:
        for writer in writers:
            writer.close()

    truth["video"] = args.output.name
    truth["y4m"] = args.y4m.name if args.y4m is not None else None
    args.output.with_suffix(".json").write_text(json.dumps(truth, indent=1) + "\n")
    print("\n".join(report(args, truth, codec)))
    return truth


if __name__ == "__main__":
    main()

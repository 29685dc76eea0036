"""Evaluate a stream model on the motion data set or on a folder of labelled videos.

    python -m model.evaluate --weights motion --out docs/eval
    python -m model.evaluate --data DIR --weights runs/clips/movinet_a0_stream_clips.safetensors

With ``--data DIR`` (``DIR/<class name>/*.mp4 ...``, class names among the model's labels) every
video is decoded exactly as for training and as the service does (resampled by timestamp,
fitted: :mod:`model.training.datasets.folder`, with its cache), its centre window of the model's
``clip_frames`` frames fed one frame at a time, and the report gives top-1/top-5, the recall of
each class and a confusion matrix (text and PNG). Without, three measurements on the motion data
set, all in stream mode, frame by frame:

1. ``clips``: held-out clips (other photographs, other seeds) rendered at the model's size;
   top-1/top-5 and a confusion matrix (text and PNG).
2. ``codec-<name>``: the same kind of clips rendered at a camera's size and frame rate
   (320x240, 25 fps), encoded to H.264 / VP8 with PyAV, decoded again, resampled to the model's
   frame rate by timestamp and resized exactly as the service does it (:func:`prepare_frame`).
3. ``long``: a continuous video whose motion changes every few seconds (10 minutes by default),
   run through the service's window policy (:class:`model.streaming.WindowedStream`): accuracy,
   and the delay between a change and the first correct label (median and p90).

``model/evaluate.py`` only runs :func:`main`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import create_model
from ..io.weights import cache_dir, read_metadata, resolve_weights
from ..movinet import MoViNet
from ..preprocess import TimestampResampler, fit_frame
from ..streaming import WindowedStream
from .datasets.folder import ClipCache, DataError, DecodeSpec, FolderClips, decode_all, scan_folder
from .datasets.motion import MotionConfig, MotionDataset, iter_sequence, random_segments, segment_frames

CAMERA_SIZE = (320, 240)
CAMERA_FPS = 25.0


@torch.no_grad()
def stream_clips(net: MoViNet, clips: torch.Tensor) -> torch.Tensor:
    """Feed float clips ``[N, 3, T, H, W]`` one frame at a time; return the final logits ``[N, K]``."""
    state, logits = None, None
    for t in range(clips.shape[2]):
        logits, state = net(clips[:, :, t : t + 1], state)
    return logits


def scores(logits: torch.Tensor, labels: np.ndarray, num_classes: int) -> dict:
    labels_t = torch.as_tensor(labels)
    top5 = logits.topk(min(5, num_classes), dim=-1).indices
    predicted = top5[:, 0]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for truth, guess in zip(labels_t.tolist(), predicted.tolist()):
        confusion[truth, guess] += 1
    totals = confusion.sum(axis=1)
    return {
        "clips": len(labels),
        "top1": float((predicted == labels_t).float().mean()),
        "top5": float((top5 == labels_t[:, None]).any(dim=1).float().mean()),
        "recall": [float(confusion[k, k] / totals[k]) if totals[k] else None for k in range(num_classes)],
        "confusion": confusion.tolist(),
    }


def confusion_text(confusion: list[list[int]], classes: list[str]) -> str:
    short = [name[:10] for name in classes]
    lines = ["truth \\ predicted".ljust(26) + " ".join(f"{s:>10}" for s in short)]
    for name, row in zip(classes, confusion):
        lines.append(f"{name:<26}" + " ".join(f"{v:>10d}" for v in row))
    return "\n".join(lines)


def confusion_png(confusion: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion, dtype=float)
    normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                        color="white" if normalised[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def encode_decode(frames: np.ndarray, fps: float, codec: str) -> list[tuple[float, np.ndarray]]:
    """Encode RGB frames with PyAV in memory and decode them again: ``[(pts_seconds, rgb)]``."""
    import av

    container_format, encoder, options = {
        "h264": ("mp4", "libx264", {"crf": "23", "preset": "veryfast"}),
        "vp8": ("webm", "libvpx", {"crf": "10", "deadline": "realtime", "cpu-used": "8"}),
    }[codec]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as out:
        stream = out.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001), options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if encoder == "libvpx":
            stream.bit_rate = 1_000_000
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buffer.seek(0)
    decoded = []
    with av.open(buffer, mode="r") as source:
        for frame in source.decode(video=0):
            decoded.append((float(frame.pts * frame.time_base), frame.to_ndarray(format="rgb24")))
    return decoded


def camera_clip_inputs(net: MoViNet, decoded: list[tuple[float, np.ndarray]]) -> torch.Tensor:
    """Resample decoded camera frames to the model's rate by pts and prepare them: ``[3, T, S, S]``."""
    info = net.info
    resampler = TimestampResampler(info.frame_rate)
    frames = []
    for pts, rgb in decoded:
        slots = resampler.push(pts)
        if slots:  # the service keeps uint8 model frames, then scales them for the forward
            prepared = torch.from_numpy(fit_frame(rgb, info.input_size, info.eval_min_size))
            frames.extend([prepared.permute(2, 0, 1).float() / 255.0] * len(slots))
    return torch.stack(frames[: info.clip_frames], dim=1)


def evaluate_clips(net: MoViNet, num_clips: int, seed: int) -> dict:
    info = net.info
    config = MotionConfig(size=info.input_size, frames=info.clip_frames, fps=info.frame_rate, split="heldout")
    dataset = MotionDataset(config, num_clips=num_clips, seed=seed, as_float=True)
    logits, labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=50, num_workers=0)
    for clips, target in tqdm(loader, desc="held-out clips", file=sys.stderr):
        logits.append(stream_clips(net, clips))
        labels.append(target.numpy())
    return scores(torch.cat(logits), np.concatenate(labels), net.num_classes)


def evaluate_codec(net: MoViNet, num_clips: int, seed: int, codec: str) -> dict:
    info = net.info
    seconds = info.clip_frames / info.frame_rate
    config = MotionConfig(size=CAMERA_SIZE, frames=int(round(seconds * CAMERA_FPS)) + 2, fps=CAMERA_FPS, split="heldout")
    dataset = MotionDataset(config, num_clips=num_clips, seed=seed)
    inputs, labels = [], []
    for index in tqdm(range(num_clips), desc=f"{codec} encode/decode", file=sys.stderr):
        frames, label = dataset[index]
        inputs.append(camera_clip_inputs(net, encode_decode(frames.numpy(), CAMERA_FPS, codec)))
        labels.append(label)
    logits = torch.cat([stream_clips(net, torch.stack(inputs[i : i + 50])) for i in range(0, len(inputs), 50)])
    return scores(logits, np.asarray(labels), net.num_classes)


@torch.no_grad()
def evaluate_long(net: MoViNet, minutes: float, seed: int, window: int | None = None, stream=None) -> dict:
    """A continuous video with a change every 3-8 s, through the windowed stream policy (or
    ``stream``: another policy with :class:`WindowedStream`'s ``window``, ``new_slot`` and ``step``)."""
    info = net.info
    config = MotionConfig(size=info.input_size, fps=info.frame_rate, split="heldout")
    segments = random_segments(seed, minutes * 60.0, seconds=(3.0, 8.0), config=config)
    bounds = segment_frames(segments, info.frame_rate)
    stream = stream or WindowedStream(net, window=window)
    slot = stream.new_slot()
    predicted, truth = [], []
    total = bounds[-1][1]
    for frame, label in tqdm(iter_sequence(segments, seed, config), total=total, desc="long video", file=sys.stderr):
        x = torch.from_numpy(frame).permute(2, 0, 1)[:, None].float().div_(255.0)
        predicted.append(int(stream.step([slot], x[None]).argmax(-1)))
        truth.append(label)
    predicted_a, truth_a = np.asarray(predicted), np.asarray(truth)
    delays = []
    for start, end in bounds[1:]:
        hits = np.nonzero(predicted_a[start:end] == truth_a[start])[0]
        delays.append(float(hits[0]) / info.frame_rate if len(hits) else float("nan"))
    delays_a = np.asarray(delays)
    found = delays_a[~np.isnan(delays_a)]
    settled = np.zeros(len(truth_a), dtype=bool)
    for start, end in bounds:  # frames whose motion has lasted a whole window already
        settled[min(start + stream.window, end) : end] = True
    return {
        "minutes": minutes,
        "frames": int(len(truth_a)),
        "changes": len(delays),
        "window_frames": stream.window,
        "accuracy_all_frames": float((predicted_a == truth_a).mean()),
        "accuracy_settled_frames": float((predicted_a[settled] == truth_a[settled]).mean()),
        "changes_never_recognised": int(np.isnan(delays_a).sum()),
        "delay_median_s": float(np.median(found)) if len(found) else None,
        "delay_p90_s": float(np.percentile(found, 90)) if len(found) else None,
    }


def recall_text(recall: list[float | None], confusion: list[list[int]], classes: list[str]) -> str:
    width = max(12, *(len(name) for name in classes))
    lines = [f"{'class':<{width}} {'clips':>6} {'recall':>7}"]
    for name, value, row in zip(classes, recall, confusion):
        lines.append(f"{name:<{width}} {sum(row):>6d} " + (f"{value:>7.3f}" if value is not None else f"{'-':>7}"))
    return "\n".join(lines)


def evaluate_folder(net: MoViNet, root: Path, cache: ClipCache, workers: int, max_seconds: float,
                    batch_size: int = 16) -> tuple[dict, list[str]]:
    """Top-1/top-5, recall per class and the confusion matrix over a folder; and the lines about skipped files."""
    info = net.info
    scan = scan_folder(root, classes=net.labels)
    spec = DecodeSpec(fps=info.frame_rate, size=info.input_size, short_side=info.eval_min_size,
                      max_frames=max(info.clip_frames, int(round(max_seconds * info.frame_rate))))
    report = decode_all(scan.videos, spec, cache, workers=workers, desc="decode")
    notes = report.lines("data")
    if scan.ignored:
        notes.append(f"ignored {len(scan.ignored)} file(s) that are not videos: "
                     + ", ".join(str(p) for p in scan.ignored[:5]) + (" ..." if len(scan.ignored) > 5 else ""))
    if not report.kept:
        raise DataError(f"{root}: none of the {len(scan.videos)} videos could be decoded")
    clips = FolderClips(report.kept, cache, spec, info.clip_frames, random=False)
    logits, labels = [], []
    loader = torch.utils.data.DataLoader(clips, batch_size=batch_size)
    for batch, target in tqdm(loader, desc="evaluate", file=sys.stderr):
        logits.append(stream_clips(net, batch.permute(0, 4, 1, 2, 3).float().div_(255.0)))
        labels.append(target.numpy())
    result = scores(torch.cat(logits), np.concatenate(labels), net.num_classes)
    result["videos"] = [str(v.path) for v in report.kept]
    result["skipped"] = [{"path": str(path), "reason": reason} for path, reason in report.skipped]
    return result, notes


def main_folder(args: argparse.Namespace) -> int:
    """``--data DIR``: one report over a folder; bad data is one message and exit code 2."""
    try:
        name = args.model
        if name is None:
            name = read_metadata(args.weights)["model"] if args.weights.endswith(".safetensors") else "movinet_a0_stream"
        net = create_model(name, weights=str(resolve_weights(name, args.weights))).eval()
        if not net.causal:
            raise DataError(f"{name} is not a stream model")
        root = Path(args.data)
        out = Path(args.out or Path("runs") / "eval" / root.resolve().name)
        cache = ClipCache(args.cache_dir or cache_dir() / "clips", int(args.cache_max_gb * 2**30))
        result, notes = evaluate_folder(net, root, cache, args.workers, args.max_seconds)
    except (DataError, ValueError) as error:  # ValueError: weights that cannot be found or read
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in notes:
        print(line)
    out.mkdir(parents=True, exist_ok=True)
    labels = net.labels
    title = f"{net.name} on {root.name}: top-1 {result['top1']:.3f}"
    (out / "confusion.txt").write_text(confusion_text(result["confusion"], labels) + "\n")
    confusion_png(result["confusion"], labels, title, out / "confusion.png")
    results = {"model": net.name, "weights": str(args.weights), "data": str(root), "labels": labels,
               "input_size": net.info.input_size, "frame_rate": net.info.frame_rate,
               "clip_frames": net.info.clip_frames, **result}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    top_k = min(5, net.num_classes)
    print(f"top-1 {result['top1']:.4f}  top-{top_k} {result['top5']:.4f}  ({result['clips']} videos, "
          f"centre {net.info.clip_frames} frames at {net.info.frame_rate:g} fps, stream mode)")
    print(recall_text(result["recall"], result["confusion"], labels))
    print(confusion_text(result["confusion"], labels))
    print(f"wrote {out / 'results.json'}, {out / 'confusion.txt'}, {out / 'confusion.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="motion", help="weights tag or .safetensors path")
    parser.add_argument("--model", default=None, help="default movinet_a0_stream, or the --weights file's")
    parser.add_argument("--data", default=None, help="a folder DIR/<class>/*.mp4 ... to evaluate on, "
                        "instead of the motion data set")
    parser.add_argument("--clips", type=int, default=500, help="held-out clips at the model's size")
    parser.add_argument("--codec-clips", type=int, default=200, help="clips per codec through encode/decode")
    parser.add_argument("--codecs", default="h264,vp8", help="comma-separated, or empty to skip")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="continuous video length (0 to skip)")
    parser.add_argument("--seed", type=int, default=20_000, help="held-out seeds start here (training uses others)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for results.json, confusion .txt/.png "
                        "(default docs/eval, or runs/eval/<folder name> with --data)")
    folder = parser.add_argument_group("a folder of videos (--data DIR)")
    folder.add_argument("--cache-dir", default=None, help="decoded clips (default ~/.cache/movinet/clips)")
    folder.add_argument("--cache-max-gb", type=float, default=10.0, help="cap of the clip cache")
    folder.add_argument("--max-seconds", type=float, default=30.0, help="decode at most this much of each video")
    folder.add_argument("--workers", type=int, default=2, help="decoding processes")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is not None:
        return main_folder(args)
    net = create_model(args.model or "movinet_a0_stream", weights=args.weights).eval()
    out = Path(args.out or "docs/eval")
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": net.name, "weights": str(args.weights), "input_size": net.info.input_size,
                     "frame_rate": net.info.frame_rate, "clip_frames": net.info.clip_frames}
    started = time.time()
    parts = {"clips": lambda: evaluate_clips(net, args.clips, args.seed)}
    for codec in filter(None, args.codecs.split(",")):
        parts[f"codec-{codec}"] = lambda codec=codec: evaluate_codec(net, args.codec_clips, args.seed + 1, codec)
    if args.long_minutes > 0:
        parts["long"] = lambda: evaluate_long(net, args.long_minutes, args.seed + 2)
    for name, run in parts.items():
        result = run()
        results[name] = result
        if "confusion" in result:
            text = confusion_text(result["confusion"], net.labels)
            (out / f"confusion-{name}.txt").write_text(text + "\n")
            confusion_png(result["confusion"], net.labels, f"{net.name} {name}: top-1 {result['top1']:.3f}",
                          out / f"confusion-{name}.png")
            print(f"{name}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  ({result['clips']} clips)")
            print(text)
        else:
            print(f"{name}: " + json.dumps(result))
    results["elapsed_s"] = round(time.time() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0

"""Fine-tune a stream model on a folder of labelled videos: ``python -m model.train --data DIR``.

    python -m model.train --data clips/ --init motion --out runs/clips        # DIR/<class>/*.mp4 ...
    python -m model.train --train clips/train --val clips/val --init kinetics600 --model movinet_a0_stream

The backbone comes from ``--init`` (``motion``, the bundled A0 model; ``kinetics600``, fetched
official weights; or a ``.safetensors`` file), loaded strictly except the classifier's last layer,
which is new, one row per class folder (:func:`model.io.weights.load_backbone`); ``--freeze-epochs N``
trains only the classifier (both its layers) for the first N epochs. The size, frame rate and clip length default
to the init model's. Videos are decoded once with the service's resampling and fitting and cached
(:mod:`model.training.datasets.folder`); training takes a random window of ``--frames`` frames of
each video per epoch, a random resized crop (the cache keeps a 25 % margin for it), a horizontal
flip (not with ``--no-flip``: for classes a mirror would swap) and a colour jitter, and the loss of
the motion recipe (:func:`model.training.recipe.prefix_loss`: every per-frame output after
``--min-frames`` frames), so the result serves frame by frame. Validation takes the centre window,
fitted exactly as the service fits frames. ``OUT/last.pt`` is written every epoch (``--resume``
continues it); the weights file carries the class names, input size, frame rate and window.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..io.weights import (
    bundled_path,
    cache_dir,
    load_backbone,
    read_metadata,
    resolve_weights,
    save_weights,
)
from ..movinet import MoViNet
from ..registry import build_model
from .datasets.folder import (
    VIDEO_SUFFIXES,
    ClipCache,
    DataError,
    DecodeSpec,
    FolderClips,
    FolderScan,
    Video,
    decode_all,
    scan_folder,
    split_folder,
)
from .recipe import EpochStats, Optimisation, to_video

# The training cache keeps this much more than the model's view on each side of the square, so a
# random resized crop can take a view at the service's scale (and zoomed in) at full resolution.
TRAIN_MARGIN = 1.25
CROP_SCALE = (0.5, 1.0)  # area of the random crop, as a fraction of the cached square
CROP_RATIO = (3 / 4, 4 / 3)


def default_init(model_name: str) -> str:
    return "motion" if bundled_path(model_name, "motion").is_file() else "kinetics600"


def spec_for(size: int, short_side: int, fps: float, max_frames: int, margin: float = 1.0) -> DecodeSpec:
    return DecodeSpec(fps=fps, size=int(round(size * margin)), short_side=int(round(short_side * margin)), max_frames=max_frames)


def augment_clips(batch: torch.Tensor, size: int, generator: torch.Generator, flip: bool, jitter: float) -> torch.Tensor:
    """uint8 ``[B, T, M, M, 3]`` -> float ``[B, 3, T, size, size]``: one random resized crop, flip and
    colour jitter per clip (the same for all its frames, so the augmentation adds no motion)."""
    video = batch.permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, T, 3, M, M)
    count, _, _, height, width = video.shape
    out = []
    for b in range(count):
        draw = torch.rand(8, generator=generator).tolist()
        area = (CROP_SCALE[0] + draw[0] * (CROP_SCALE[1] - CROP_SCALE[0])) * height * width
        ratio = math.exp(math.log(CROP_RATIO[0]) + draw[1] * (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])))
        crop_w = min(width, max(8, round(math.sqrt(area * ratio))))
        crop_h = min(height, max(8, round(math.sqrt(area / ratio))))
        top, left = int(draw[2] * (height - crop_h + 1)), int(draw[3] * (width - crop_w + 1))
        clip = video[b, :, :, top : top + crop_h, left : left + crop_w]  # (T, 3, h, w)
        clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if flip and draw[4] < 0.5:
            clip = clip.flip(-1)
        if jitter > 0:
            brightness, contrast, saturation = (1.0 + jitter * (2 * d - 1) for d in draw[5:8])
            clip = clip * brightness
            mean = clip.mean(dim=(1, 2, 3), keepdim=True)
            clip = (clip - mean) * contrast + mean
            gray = clip.mean(dim=1, keepdim=True)
            clip = (clip - gray) * saturation + gray
        out.append(clip.clamp_(0.0, 1.0).transpose(0, 1))  # (3, T, size, size)
    return torch.stack(out)


def set_backbone_trainable(net: MoViNet, trainable: bool) -> None:
    """Freeze (or thaw) everything but the classifier; frozen BatchNorms keep their statistics."""
    for name, parameter in net.named_parameters():
        parameter.requires_grad_(trainable or name.startswith("classifier."))


def train_mode(net: MoViNet, backbone_trainable: bool) -> None:
    net.train()
    if not backbone_trainable:
        for name, module in net.named_modules():
            if isinstance(module, torch.nn.BatchNorm3d) and not name.startswith("classifier."):
                module.eval()


@torch.no_grad()
def evaluate(net: MoViNet, loader, device: torch.device, num_classes: int) -> dict:
    """Top-1 over the validation clips (centre windows) and the recall of each class."""
    net.eval()
    hits, totals = np.zeros(num_classes), np.zeros(num_classes)
    for clips, labels in loader:
        logits, _ = net(to_video(clips, device))
        predicted = logits.argmax(-1).cpu().numpy()
        for truth, guess in zip(labels.numpy(), predicted):
            totals[truth] += 1
            hits[truth] += truth == guess
    return {"val_acc": float(hits.sum() / max(totals.sum(), 1)),
            "val_recall": [float(h / t) if t else None for h, t in zip(hits, totals)]}


def balance_lines(classes: list[str], train: list[Video], val: list[Video]) -> list[str]:
    train_counts = np.bincount([v.label for v in train], minlength=len(classes))
    val_counts = np.bincount([v.label for v in val], minlength=len(classes))
    width = max(12, *(len(name) for name in classes))
    lines = [f"  {'class':<{width}} {'train':>6} {'val':>6}"]
    lines += [f"  {name:<{width}} {t:>6d} {v:>6d}" for name, t, v in zip(classes, train_counts, val_counts)]
    lines.append(f"  {'total':<{width}} {train_counts.sum():>6d} {val_counts.sum():>6d}")
    if train_counts.min() > 0 and train_counts.max() > 2 * train_counts.min():
        lines.append(f"  unbalanced: the largest class has {train_counts.max() / train_counts.min():.1f}x the "
                     "clips of the smallest (the loss is not reweighted)")
    return lines


def load_split(args: argparse.Namespace) -> tuple[FolderScan, list[Video], list[Video], str]:
    """The training classes and videos, the validation videos, and how the split was made."""
    if args.train:
        scan = scan_folder(args.train)
        if not args.val:
            train, val = split_folder(scan, args.val_fraction, args.seed)
            return scan, train, val, f"{args.val_fraction:.0%} of each class held out (seed {args.seed})"
        held = scan_folder(args.val, classes=scan.classes)
        scan.ignored.extend(p for p in held.ignored if p not in scan.ignored)
        return scan, scan.videos, held.videos, f"validation folder {args.val}"
    scan = scan_folder(args.data)
    if args.val:
        held = scan_folder(args.val, classes=scan.classes)
        scan.ignored.extend(p for p in held.ignored if p not in scan.ignored)
        return scan, scan.videos, held.videos, f"validation folder {args.val}"
    train, val = split_folder(scan, args.val_fraction, args.seed)
    return scan, train, val, f"{args.val_fraction:.0%} of each class held out, at least one (seed {args.seed})"


def build(args: argparse.Namespace, classes: list[str]) -> tuple[MoViNet, dict, list[str], str]:
    """The model with the init weights' backbone and a new head; its construction args; the fresh keys."""
    model_name = args.model or "movinet_a0_stream"
    init = args.init or default_init(model_name)
    if init.endswith(".safetensors") and not args.model:
        model_name = read_metadata(init)["model"]
    path = resolve_weights(model_name, init)
    meta = read_metadata(path)
    if meta["model"] != model_name:
        raise DataError(f"--init {init} holds {meta['model']}, not {model_name} (drop --model or pick other weights)")
    if meta["info"]["mode"] != "stream":
        raise DataError(f"{model_name} is not a stream model; fine-tune a *_stream model")
    info = meta["info"]
    size = args.size or info["input_size"]
    short_side = max(size, int(round(size * info["eval_min_size"] / info["input_size"])))
    overrides = {"input_size": size, "frame_rate": args.fps or info["frame_rate"],
                 "clip_frames": args.frames or info["clip_frames"], "eval_min_size": short_side}
    net, fresh = load_backbone(path, classes, overrides)
    construction = {"model": model_name, "labels": classes, "info_overrides": overrides,
                    "mode": {k: v for k, v in meta["mode"].items()
                             if k not in ("causal", "conv_type", "se_type", "activation", "gating_activation")}}
    return net, construction, fresh, str(path)


def rebuild(construction: dict) -> MoViNet:
    return build_model(construction["model"], len(construction["labels"]), labels=construction["labels"],
                       info_overrides=construction["info_overrides"], **construction["mode"])


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The folder recipe; bad data is reported in one message with exit code 2, not a traceback."""
    try:
        return _run(args, argv)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda asked for, but torch sees no CUDA device")
    torch.manual_seed(args.seed)
    data_name = Path(args.train or args.data).resolve().name
    out = Path(args.out or Path("runs") / data_name)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "last.pt"

    scan, train_videos, val_videos, split_text = load_split(args)
    classes = scan.classes
    saved = None
    if args.resume or args.export:
        if not checkpoint_path.is_file():
            raise DataError(f"--resume: no checkpoint at {checkpoint_path}")
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        construction = json.loads(saved["construction"])
        if construction["labels"] != classes:
            raise DataError(f"{checkpoint_path} was trained on classes {construction['labels']}, this folder has {classes}")
        net, fresh, init_source = rebuild(construction), json.loads(saved["fresh"]), saved["init"]
        net.load_state_dict(saved["model"])
    else:
        try:
            net, construction, fresh, init_source = build(args, classes)
        except ValueError as error:  # weights that cannot be found or do not fit
            raise DataError(str(error)) from None
        print(f"init: {init_source}; new head for {len(classes)} classes, re-initialised: {', '.join(fresh)}",
              file=sys.stderr)
    info = net.info
    frames = info.clip_frames
    min_frames = args.min_frames or max(1, frames // 2)
    if min_frames > frames:
        raise DataError(f"--min-frames ({min_frames}) must not exceed --frames ({frames})")
    max_frames = max(frames, int(round(args.max_seconds * info.frame_rate)))
    train_spec = spec_for(info.input_size, info.eval_min_size, info.frame_rate, max_frames, TRAIN_MARGIN)
    val_spec = spec_for(info.input_size, info.eval_min_size, info.frame_rate, max_frames)
    cache = ClipCache(args.cache_dir or cache_dir() / "clips", int(args.cache_max_gb * 2**30))

    print(f"data: {len(classes)} classes; {split_text}; model frames {info.input_size}x{info.input_size} at "
          f"{info.frame_rate:g} fps, clips of {frames} ({frames / info.frame_rate:g} s); cache {cache.root} "
          f"(cap {args.cache_max_gb:g} GiB)", file=sys.stderr)
    if scan.ignored:
        shown = ", ".join(str(p) for p in scan.ignored[:5]) + (" ..." if len(scan.ignored) > 5 else "")
        print(f"  ignored {len(scan.ignored)} file(s) that are not videos ({', '.join(VIDEO_SUFFIXES)}): {shown}",
              file=sys.stderr)
    reports = {}
    for what, videos, spec in (("train", train_videos, train_spec), ("val", val_videos, val_spec)):
        reports[what] = decode_all(videos, spec, cache, workers=args.workers, desc=f"decode {what}")
        for line in reports[what].lines(what):
            print(line, file=sys.stderr)
    train_videos, val_videos = reports["train"].kept, reports["val"].kept
    missing = [name for label, name in enumerate(classes) if not any(v.label == label for v in train_videos)]
    if missing:
        raise DataError(f"no usable training video left for class(es) {', '.join(map(repr, missing))}")
    short = sum(1 for n in reports["train"].frames + reports["val"].frames if n < frames)
    if short:
        print(f"  {short} video(s) shorter than {frames} frames ({frames / info.frame_rate:g} s): padded with "
              "their last frame", file=sys.stderr)
    print("class balance:", file=sys.stderr)
    for line in balance_lines(classes, train_videos, val_videos):
        print(line, file=sys.stderr)

    net = net.to(device)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.momentum = args.bn_momentum
    train_set = FolderClips(train_videos, cache, train_spec, frames, random=True, seed=args.seed)
    val_set = FolderClips(val_videos, cache, val_spec, frames, random=False)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size * 2)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    optimisation = Optimisation(net, args.lr, args.weight_decay, args.max_steps or steps_per_epoch * args.epochs,
                                device, args.amp)
    generator = torch.Generator().manual_seed(args.seed)

    step, start_epoch, history = 0, 0, []
    if saved is not None:
        optimisation.resume(saved)
        generator.set_state(saved["generator"])
        step, start_epoch, history = saved["step"], saved["epoch"], json.loads(saved["history"])
        print(f"resumed from {checkpoint_path} at epoch {start_epoch}, step {step}", file=sys.stderr)
    if args.export:
        start_epoch = args.epochs

    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        backbone_trainable = epoch >= args.freeze_epochs
        set_backbone_trainable(net, backbone_trainable)
        train_set.epoch = epoch
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        part = "" if backbone_trainable else " (head only)"
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}{part}", unit="step", file=sys.stderr)
        stats, epoch_started = EpochStats(), time.time()
        for batch_index in bar:
            if args.max_steps and step >= args.max_steps:
                break
            train_mode(net, backbone_trainable)
            items = [train_set[int(i)] for i in order[batch_index * args.batch_size : (batch_index + 1) * args.batch_size]]
            batch = torch.stack([clip for clip, _ in items])
            target = torch.tensor([label for _, label in items], device=device)
            video = augment_clips(batch, info.input_size, generator, flip=not args.no_flip, jitter=args.jitter).to(device)
            logits, loss = optimisation.step(video, target, min_frames, args.label_smoothing)
            step += 1
            stats.add(logits, target, loss)
            bar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{stats.accuracy:.3f}",
                            clips_s=f"{stats.seen / (time.time() - epoch_started):.1f}", lr=f"{optimisation.lr:.1e}")
        bar.close()
        record = {"epoch": epoch + 1, "step": step, "head_only": not backbone_trainable,
                  "train_loss": stats.loss, "train_acc": stats.accuracy}
        if len(val_set):
            record.update(evaluate(net, val_loader, device, len(classes)))
        record["elapsed_s"] = round(time.time() - started, 1)
        history.append(record)
        print(json.dumps(record), file=sys.stderr)
        torch.save({"model": net.state_dict(), "optimizer": optimisation.optimizer.state_dict(),
                    "scaler": optimisation.scaler.state_dict(),
                    "generator": generator.get_state(), "step": step, "epoch": epoch + 1,
                    "history": json.dumps(history), "construction": json.dumps(construction),
                    "fresh": json.dumps(fresh), "init": init_source}, checkpoint_path)
        if args.max_steps and step >= args.max_steps:
            break

    net = net.cpu().eval()
    weights_out = Path(args.weights_out or out / f"{construction['model']}_{data_name}.safetensors")
    save_weights(net, weights_out, extra={
        "data": str(args.train or args.data), "val": str(args.val) if args.val else None, "split": split_text,
        "init": init_source, "reinitialised": fresh, "freeze_epochs": args.freeze_epochs,
        "train_clips": len(train_videos), "val_clips": len(val_videos), "epochs": args.epochs, "seed": args.seed,
        "flip": not args.no_flip, "min_frames": min_frames,
        "command": "python -m model.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "history": history,
    })
    print(f"wrote {weights_out}", file=sys.stderr)
    return 0


"""Train a MoViNet stream model on the generated motion data set.

    python -m model.train --data motion --model movinet_a0_stream --out runs/motion

(``--data DIR``, a folder of labelled videos, goes to :mod:`.finetune`; this module owns the
command line of both and the motion recipe.)

Defaults are chosen to train on 2 CPU cores in well under an hour (see docs/training.md): 64x64
frames, 5 fps (the official A0 rate; the service's clients send 5 fps), clips of 10 frames (2 s).
The loss is taken on the per-frame outputs of every prefix of at least ``--min-frames`` frames,
so the model is right after half a window as well as after a full one, which is what the
service's windowed streams read (:mod:`model.streaming`).

The training clips are rendered once into a uint8 cache and augmented with label-aware flips:
a horizontal mirror swaps pan left/right and the two rotations; playing a clip backwards swaps
every motion with its opposite; swapping the height and width axes turns pans into tilts and
swaps the rotations. Checkpoints (``last.pt``) are written every epoch and ``--resume``
continues from one. The result is a safetensors file with the label names, input size, frame
rate and window in its metadata (:mod:`model.io.weights`). ``model/train.py`` only runs
:func:`main`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io.weights import save_weights
from ..registry import build_model
from . import finetune
from .datasets.motion import CLASSES, MotionConfig, MotionDataset
from .recipe import EpochStats, Optimisation, to_video

# Opposites for label-aware augmentation (names from CLASSES).
MIRROR = {"pan left": "pan right", "rotate clockwise": "rotate counter-clockwise"}
# Swapping the height and width axes (a reflection about the diagonal) turns a slide to the right
# into a slide down, and reverses the sense of a rotation.
TRANSPOSE = {
    "pan left": "tilt up",
    "pan right": "tilt down",
    "rotate clockwise": "rotate counter-clockwise",
}
REVERSE = {
    "pan left": "pan right",
    "tilt up": "tilt down",
    "zoom in": "zoom out",
    "rotate clockwise": "rotate counter-clockwise",
}


def label_permutation(classes: tuple[str, ...], swaps: dict[str, str]) -> torch.Tensor:
    both = {**swaps, **{v: k for k, v in swaps.items()}}
    return torch.tensor([classes.index(both.get(name, name)) for name in classes])


def augmentations(classes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The label permutation of each label-aware augmentation."""
    return {name: label_permutation(classes, table) for name, table in
            (("mirror", MIRROR), ("reverse", REVERSE), ("transpose", TRANSPOSE))}


def augment(
    batch: torch.Tensor, target: torch.Tensor, generator: torch.Generator, swaps: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror, play backwards and transpose (square frames only) a random half of the clips each.

    ``batch`` is uint8 ``(B, T, H, W, C)``; the labels follow each transform.
    """
    batch, target = batch.clone(), target.clone()
    n = len(batch)
    flip = torch.rand(n, generator=generator) < 0.5
    backwards = torch.rand(n, generator=generator) < 0.5
    transpose = torch.rand(n, generator=generator) < 0.5
    batch[flip] = batch[flip].flip(3)  # mirror the width axis
    target[flip] = swaps["mirror"][target[flip]]
    batch[backwards] = batch[backwards].flip(1)  # play backwards
    target[backwards] = swaps["reverse"][target[backwards]]
    if batch.shape[2] == batch.shape[3]:
        batch[transpose] = batch[transpose].transpose(2, 3)  # swap the height and width axes
        target[transpose] = swaps["transpose"][target[transpose]]
    return batch, target


def render_cache(config, num_clips: int, seed: int, path: Path, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Render ``num_clips`` clips once into ``path`` (uint8 .npy + labels), reusing a complete cache."""
    dataset = MotionDataset(config, num_clips=num_clips, seed=seed)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    meta_path = path.with_suffix(".json")
    key = {"config": repr(config), "num_clips": num_clips, "seed": seed}
    if path.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()) == key:
        return np.load(path, mmap_mode="r"), labels
    shape = (num_clips, config.frames, config.height, config.width, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    clips = np.lib.format.open_memmap(path.with_suffix(".partial.npy"), mode="w+", dtype=np.uint8, shape=shape)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers)
    index = 0
    with tqdm(total=num_clips, desc=f"render {path.stem}", unit="clip", file=sys.stderr) as bar:
        for batch, _ in loader:
            clips[index : index + len(batch)] = batch.numpy()
            index += len(batch)
            bar.update(len(batch))
    clips.flush()
    del clips
    os.replace(path.with_suffix(".partial.npy"), path)
    meta_path.write_text(json.dumps(key))
    return np.load(path, mmap_mode="r"), labels


@torch.no_grad()
def evaluate_clips(net, clips: np.ndarray, labels: np.ndarray, device, batch_size: int = 32) -> float:
    net.eval()
    correct = 0
    for start in range(0, len(clips), batch_size):
        video = to_video(torch.from_numpy(np.array(clips[start : start + batch_size])), device)
        logits, _ = net(video)
        correct += (logits.argmax(-1).cpu().numpy() == labels[start : start + batch_size]).sum()
    return float(correct) / len(clips)


# The bundled motion recipe's settings where the two recipes differ (docs/training.md); a folder
# run takes its size, frame rate and clip length from the --init weights.
MOTION_DEFAULTS = {"model": "movinet_a0_stream", "out": "runs/motion", "size": 64, "fps": 5.0, "frames": 10,
                   "min_frames": 5, "lr": 3e-3, "batch_size": 16}
FOLDER_DEFAULTS = {"lr": 1e-3, "batch_size": 8}
FOLDER_ONLY = ("train", "val", "init", "no_flip", "cache_dir")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model.train",
        description="Train a MoViNet stream model on the generated motion data set (--data motion) or "
                    "fine-tune one on a folder of labelled videos (--data DIR, DIR/<class name>/*.mp4 ...).",
        epilog="Folders: see model/training/finetune.py and docs/training.md. Bad data exits with code 2 "
               "and one message.")
    parser.add_argument("--data", default=None,
                        help="'motion' (the bundled recipe, the default) or a folder DIR/<class>/*.{mp4,webm,mkv,avi,mov}")
    parser.add_argument("--model", default=None,
                        help="a stream model from model.list_models() (default movinet_a0_stream, or the --init file's)")
    parser.add_argument("--out", default=None, help="run folder (checkpoints, caches, final weights; "
                        "default runs/motion or runs/<folder name>)")
    parser.add_argument("--weights-out", help="final safetensors path (default OUT/<model>_<data>.safetensors)")
    parser.add_argument("--size", type=int, default=None, help="frame size, square (motion: 64; folder: the init model's)")
    parser.add_argument("--fps", type=float, default=None, help="model frame rate (motion: 5; folder: the init model's)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per training clip = the service window (motion: 10; folder: the init model's)")
    parser.add_argument("--min-frames", type=int, default=None,
                        help="loss on prefixes at least this long (motion: 5; folder: half of --frames)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None, help="clips per step (motion: 16; folder: 8)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (motion: 3e-3; folder: 1e-3)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", action="store_true", help="mixed precision (bf16 autocast; on CUDA, fp16 with a grad scaler)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering (motion) or decoding (folder) the data")
    parser.add_argument("--bn-momentum", type=float, default=0.1, help="BatchNorm momentum while training")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--export", action="store_true", help="only write the weights file from OUT/last.pt")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke tests)")
    motion = parser.add_argument_group("the motion data set (--data motion)")
    motion.add_argument("--clips", type=int, default=3000, help="distinct training clips (rendered once)")
    motion.add_argument("--val-clips", type=int, default=200, help="held-out clips checked every epoch")
    motion.add_argument("--rezero-init", type=float, default=1.0,
                        help="initial ReZero scale of every block (TF uses 0; from scratch on a CPU budget, "
                             "0 leaves the residual branches without gradient for the first epoch)")
    folder = parser.add_argument_group("a folder of videos (--data DIR, or --train DIR [--val DIR])")
    folder.add_argument("--train", default=None, help="training folder DIR/<class>/*.mp4 ... (same as --data DIR)")
    folder.add_argument("--val", default=None, help="validation folder with the same class names "
                        "(default: a fixed, seeded split of --val-fraction of each class)")
    folder.add_argument("--val-fraction", type=float, default=0.2,
                        help="fraction of each class held out without --val (at least one clip per class)")
    folder.add_argument("--init", default=None, help="backbone weights: motion | kinetics600 | PATH.safetensors "
                        "(default motion for movinet_a0_stream, else kinetics600); the head is new")
    folder.add_argument("--freeze-epochs", type=int, default=0, help="train only the classifier for the first N epochs")
    folder.add_argument("--no-flip", action="store_true",
                        help="no horizontal flips (for classes a mirror swaps, such as left/right)")
    folder.add_argument("--jitter", type=float, default=0.25, help="colour jitter: brightness, contrast, saturation +-")
    folder.add_argument("--max-seconds", type=float, default=30.0, help="decode at most this much of each video")
    folder.add_argument("--cache-dir", default=None,
                        help="decoded clips (default $MOVINET_CACHE_DIR/clips or ~/.cache/movinet/clips)")
    folder.add_argument("--cache-max-gb", type=float, default=10.0,
                        help="cap of the clip cache; least recently used clips are evicted beyond it")
    args = parser.parse_args(argv)
    if args.data is not None and args.train is not None:
        parser.error("give the training folder once: --data DIR or --train DIR")
    args.folder = args.train is not None or args.data not in (None, "motion")
    if args.folder:
        if args.data is None and args.train is None:
            parser.error("--val needs a training folder (--data DIR or --train DIR)")
        for name, value in FOLDER_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    else:
        used = [f"--{name.replace('_', '-')}" for name in FOLDER_ONLY if getattr(args, name)]
        if used:
            parser.error(f"{', '.join(used)} only apply to a folder of videos (--data DIR)")
        args.data = "motion"
        for name, value in MOTION_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.folder:
        return finetune.run(args, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.min_frames > args.frames:
        raise SystemExit(f"--min-frames ({args.min_frames}) must not exceed --frames ({args.frames})")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_config = MotionConfig(size=args.size, frames=args.frames, fps=args.fps, split="train")
    val_config = MotionConfig(size=args.size, frames=args.frames, fps=args.fps, split="heldout")
    clips, labels = render_cache(train_config, args.clips, args.seed, out / "cache" / "train.npy", args.workers)
    val_clips, val_labels = render_cache(val_config, args.val_clips, args.seed + 10_000, out / "cache" / "val.npy", args.workers)

    net = build_model(
        args.model,
        num_classes=len(CLASSES),
        labels=list(CLASSES),
        info_overrides={"input_size": args.size, "frame_rate": args.fps, "clip_frames": args.frames, "eval_min_size": args.size},
    ).to(device)
    if not net.causal:
        raise SystemExit(f"{args.model} is not a stream model; train a *_stream model")
    with torch.no_grad():
        for block in net.blocks:
            block.rezero.fill_(args.rezero_init)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            # Keras' 0.99 (PyTorch 0.01) suits fine-tuning; from scratch, running statistics must
            # follow weights that change fast, or evaluation lags far behind training.
            module.momentum = args.bn_momentum
    steps_per_epoch = math.ceil(len(clips) / args.batch_size)
    optimisation = Optimisation(net, args.lr, args.weight_decay, args.max_steps or steps_per_epoch * args.epochs,
                                device, args.amp)
    swaps = augmentations(CLASSES)

    step, start_epoch, history = 0, 0, []
    checkpoint_path = out / "last.pt"
    if args.resume or args.export:
        if not checkpoint_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {checkpoint_path}")
        saved = torch.load(checkpoint_path, map_location=device, weights_only=True)
        net.load_state_dict(saved["model"])
        optimisation.resume(saved)
        step, start_epoch, history = saved["step"], saved["epoch"], json.loads(saved["history"])
        print(f"resumed from {checkpoint_path} at epoch {start_epoch}, step {step}", file=sys.stderr)

    if args.export:
        start_epoch = args.epochs  # skip training: write what the resumed checkpoint holds
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        net.train()
        order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", file=sys.stderr)
        stats = EpochStats()
        for batch_index in bar:
            if args.max_steps and step >= args.max_steps:
                break
            index = order[batch_index * args.batch_size : (batch_index + 1) * args.batch_size].sort().values
            batch = torch.from_numpy(np.array(clips[index.numpy()]))
            target = torch.from_numpy(labels[index.numpy()])
            batch, target = augment(batch, target, generator, swaps)
            video, target = to_video(batch, device), target.to(device)
            logits, loss = optimisation.step(video, target, args.min_frames, args.label_smoothing)
            step += 1
            stats.add(logits, target, loss)
            bar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{stats.accuracy:.3f}", lr=f"{optimisation.lr:.1e}")
        bar.close()
        val_acc = evaluate_clips(net, val_clips, val_labels, device)
        record = {"epoch": epoch + 1, "step": step, "train_loss": stats.loss,
                  "train_acc": stats.accuracy, "val_acc": val_acc, "elapsed_s": round(time.time() - started, 1)}
        history.append(record)
        print(json.dumps(record), file=sys.stderr)
        torch.save({"model": net.state_dict(), "optimizer": optimisation.optimizer.state_dict(),
                    "scheduler": optimisation.scheduler.state_dict(),
                    "step": step, "epoch": epoch + 1, "history": json.dumps(history)}, checkpoint_path)
        if args.max_steps and step >= args.max_steps:
            break

    net = net.cpu().eval()
    weights_out = Path(args.weights_out or out / f"{args.model}_motion.safetensors")
    save_weights(net, weights_out, extra={
        "data": "motion", "train_clips": args.clips, "epochs": args.epochs, "seed": args.seed,
        "command": "python -m model.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "history": history,
    })
    print(f"wrote {weights_out}", file=sys.stderr)
    return 0

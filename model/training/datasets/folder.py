"""A folder of labelled videos: ``ROOT/<class name>/*.{mp4,webm,mkv,avi,mov}`` (UCF101-style).

This module owns reading such a folder for training and evaluation:

- :func:`scan_folder`: the classes (sorted folder names) and their videos; files that are not
  videos (by suffix) are counted and ignored; an empty class folder, a folder with fewer than two
  classes or an unknown class is refused with one :class:`DataError` that names them.
- :func:`split_folder`: the fixed, seeded, per-class split when there is no validation folder.
- :func:`decode_video`: PyAV decode, resampled to the model's frame rate by timestamp
  (:class:`model.preprocess.TimestampResampler`) and fitted with :func:`model.preprocess.fit_frame`,
  the functions the service uses, so what a model learns here is what it sees there.
- :class:`ClipCache`: each decoded video once, as uint8 ``.npy``, keyed by the file's path, size
  and mtime and the decode settings (a changed file is decoded again), least recently used
  entries evicted beyond a byte cap; a video that fails to decode is remembered too, with why.
- :func:`decode_all`: the first pass over a split (processes, a progress bar), which names and
  counts every video it skips; :class:`FolderClips`: the ``Dataset`` over what it kept.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ...preprocess import TimestampResampler, fit_frame

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".webm", ".mkv", ".avi", ".mov")
# Part of every cache key: bump it when decode_video's output changes, so old entries stop matching.
DECODER_VERSION = 1
DEFAULT_CACHE_MAX_BYTES = 10 * 2**30


class DataError(ValueError):
    """A data folder that cannot be used as it is; the message names what is wrong and where."""


class VideoError(Exception):
    """One video that cannot be decoded; ``reason`` is short (``"empty file (0 bytes)"``)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


# ----------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class Video:
    path: Path
    label: int


@dataclass
class FolderScan:
    root: Path
    classes: list[str]
    videos: list[Video]
    ignored: list[Path] = field(default_factory=list)  # files that are not videos

    def counts(self) -> list[int]:
        return np.bincount([v.label for v in self.videos], minlength=len(self.classes)).tolist()


def scan_folder(root: str | Path, classes: Sequence[str] | None = None) -> FolderScan:
    """The class folders of ``root`` and their videos (in sorted order).

    With ``classes`` (a model's or the training folder's labels) the folder's classes must be
    among them and labels index into them; without, the classes are the folder names, sorted, and
    there must be at least two.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (expected {root}/<class name>/*.mp4 ...)")
    entries = sorted(root.iterdir())
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    ignored = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    if not folders:
        raise DataError(
            f"{root} holds no class folders: put each class's videos in {root}/<class name>/ "
            f"({', '.join(VIDEO_SUFFIXES)})"
        )
    names = [p.name for p in folders]
    if classes is None:
        if len(folders) < 2:
            raise DataError(f"{root} holds only one class folder ({names[0]!r}): a classifier needs at least two classes")
        classes = names
    else:
        unknown = [name for name in names if name not in classes]
        if unknown:
            raise DataError(
                f"{root}: class folder(s) {', '.join(map(repr, unknown))} are not among the model's "
                f"{len(classes)} classes ({', '.join(map(repr, classes))})"
            )
    videos, empty = [], []
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        found = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        ignored.extend(p for p in files if p.suffix.lower() not in VIDEO_SUFFIXES)
        if not found:
            empty.append(folder.name)
        videos.extend(Video(path, list(classes).index(folder.name)) for path in found)
    if empty:
        raise DataError(
            f"{root}: {len(empty)} class folder(s) hold no videos ({', '.join(VIDEO_SUFFIXES)}): "
            f"{', '.join(map(repr, empty))}; add clips or remove the folder(s)"
        )
    return FolderScan(root, list(classes), videos, ignored)


def split_folder(scan: FolderScan, fraction: float, seed: int) -> tuple[list[Video], list[Video]]:
    """A fixed per-class split: ``round(fraction * n)`` clips of each class (at least one) held out.

    The order within a class is the sorted file list permuted by ``seed`` and the class index, so
    the split does not change when other classes gain or lose clips.
    """
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}")
    train, val, too_few = [], [], []
    for label, name in enumerate(scan.classes):
        members = [v for v in scan.videos if v.label == label]
        if len(members) < 2:
            too_few.append(f"{name!r} ({len(members)})")
            continue
        order = np.random.default_rng([int(seed), label, 0x5B117]).permutation(len(members))
        held = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        val.extend(members[i] for i in sorted(order[:held]))
        train.extend(members[i] for i in sorted(order[held:]))
    if too_few:
        raise DataError(
            f"{scan.root}: class(es) {', '.join(too_few)} have fewer than 2 videos, so none can be held "
            "out for validation; add clips or give a validation folder with --val"
        )
    return train, val


# ----------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodeSpec:
    """How a video becomes model frames: the frame rate, the fitted square and the longest clip kept."""

    fps: float
    size: int
    short_side: int
    max_frames: int

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.size < 8 or self.short_side < self.size or self.max_frames < 1:
            raise ValueError(f"bad decode settings {self}")


def decode_video(path: str | Path, spec: DecodeSpec) -> np.ndarray:
    """A video file -> uint8 ``[T, size, size, 3]`` at ``spec.fps``; raises :class:`VideoError`.

    Frames are placed on the model's time grid by their timestamps, as the service does, so a
    25 fps file gives every fifth frame to a 5 fps model and a 2 fps file repeats frames.
    """
    import av  # deferred: importing the training package should not need it

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise VideoError(path, f"cannot be read ({error.strerror})") from None
    if size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            resampler = TimestampResampler(spec.fps)
            for index, frame in enumerate(container.decode(stream)):
                pts = frame.time if frame.time is not None else index / rate
                slots = resampler.push(pts)
                if not slots:  # between grid points, or a timestamp that went backwards
                    continue
                fitted = fit_frame(frame.to_ndarray(format="rgb24"), spec.size, spec.short_side)
                frames.extend([fitted] * len(slots))
                if len(frames) >= spec.max_frames:
                    break
    except VideoError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, OSError) as error:
        raise VideoError(path, f"unreadable ({type(error).__name__}: {error})") from None
    if not frames:
        raise VideoError(path, "no frames could be decoded")
    return np.stack(frames[: spec.max_frames])


class ClipCache:
    """Decoded videos as ``.npy`` files under ``root``, at most ``max_bytes`` (least recently used go first).

    The key is the video's resolved path, size and mtime (ns) plus the decode settings and
    :data:`DECODER_VERSION`: touching, replacing or re-encoding a video makes a new key, so it is
    decoded again (the old entry ages out). A failure is kept as a small ``.err`` file with its
    reason, so a broken file is not retried on every run until it changes. Entries are
    touched when read, so eviction follows use. A folder larger than the cap still trains, but
    what was evicted is decoded again when read.
    """

    def __init__(self, root: str | Path, max_bytes: int = DEFAULT_CACHE_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the cache cap must be positive, got {max_bytes} bytes")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)

    def key(self, path: Path, spec: DecodeSpec) -> str:
        stat = path.stat()
        text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{spec}|decoder {DECODER_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def contains(self, path: str | Path, spec: DecodeSpec) -> bool:
        """Whether ``path`` (as it is now) has an entry, a clip or a remembered failure."""
        try:
            entry = self._entry(self.key(Path(path), spec))
        except OSError:
            return False
        return entry.exists() or entry.with_suffix(".err").exists()

    def load(self, path: str | Path, spec: DecodeSpec) -> np.ndarray:
        """The decoded clip of ``path`` (decoding and storing it on a miss); raises :class:`VideoError`."""
        path = Path(path)
        try:
            key = self.key(path, spec)
        except OSError as error:
            raise VideoError(path, f"cannot be read ({error.strerror})") from None
        entry = self._entry(key)
        failure = entry.with_suffix(".err")
        for candidate in (entry, failure):
            try:
                os.utime(candidate)  # mark as used: eviction goes by mtime
            except FileNotFoundError:
                continue
            if candidate is failure:
                raise VideoError(path, failure.read_text())
            try:
                return np.load(entry)
            except (OSError, ValueError):  # a damaged entry: decode again
                entry.unlink(missing_ok=True)
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            clip = decode_video(path, spec)
        except VideoError as error:
            failure.write_text(error.reason)
            raise
        partial = entry.with_name(f"{entry.stem}.{os.getpid()}.partial.npy")
        np.save(partial, clip)
        os.replace(partial, entry)
        return clip

    def entries(self) -> list[Path]:
        return [p for p in self.root.glob("*/*") if p.suffix in (".npy", ".err") and ".partial" not in p.name]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def evict(self) -> int:
        """Delete least recently used entries until the cache fits its cap; returns how many went."""
        stats = []
        for entry in self.entries():
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            stats.append((stat.st_mtime_ns, stat.st_size, entry))
        total = sum(size for _, size, _ in stats)
        removed = 0
        for _, size, entry in sorted(stats, key=lambda item: item[0]):
            if total <= self.max_bytes:
                break
            entry.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed


# ----------------------------------------------------------------------------- the first pass


@dataclass
class DecodeReport:
    """What the first pass kept and skipped, and why; :meth:`lines` is what the command prints."""

    kept: list[Video]
    frames: list[int]  # decoded length of each kept video
    skipped: list[tuple[Path, str]]
    decoded: int  # videos not found in the cache

    def lines(self, what: str) -> list[str]:
        lines = [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        total = len(self.kept) + len(self.skipped)
        summary = (f"{what}: {len(self.kept)} of {total} videos usable ({self.decoded} decoded now, "
                   f"{total - self.decoded} from the cache)")
        if self.skipped:
            reasons: dict[str, int] = {}
            for _, reason in self.skipped:
                kind = reason.split(" (")[0]
                reasons[kind] = reasons.get(kind, 0) + 1
            summary += "; skipped " + ", ".join(f"{n} {kind}" for kind, n in sorted(reasons.items()))
        return [*lines, summary]


def _load_one(args: tuple[ClipCache, Path, DecodeSpec]) -> tuple[int | None, str | None, bool]:
    """``(frames, None, decoded)`` or ``(None, reason, decoded)`` for one video."""
    cache, path, spec = args
    decoded = not cache.contains(path, spec)
    try:
        return len(cache.load(path, spec)), None, decoded
    except VideoError as error:
        return None, error.reason, decoded


def _single_thread() -> None:
    torch.set_num_threads(1)  # one process per core: torch's own threads would oversubscribe


def decode_all(
    videos: Sequence[Video], spec: DecodeSpec, cache: ClipCache, workers: int = 0, desc: str = "decode"
) -> DecodeReport:
    """Decode (or find in the cache) every video once; return what was kept and what was skipped, and why."""
    jobs = [(cache, video.path, spec) for video in videos]
    with tqdm(total=len(jobs), desc=desc, unit="video", file=sys.stderr) as bar:
        if workers > 0 and len(jobs) > 1:
            with ProcessPoolExecutor(workers, initializer=_single_thread) as pool:
                results = []
                for result in pool.map(_load_one, jobs, chunksize=4):
                    results.append(result)
                    bar.update()
        else:
            results = []
            for job in jobs:
                results.append(_load_one(job))
                bar.update()
    kept, frames, skipped = [], [], []
    for video, (length, reason, _) in zip(videos, results):
        if reason is None:
            kept.append(video)
            frames.append(length)
        else:
            skipped.append((video.path, reason))
    cache.evict()
    return DecodeReport(kept, frames, skipped, decoded=sum(decoded for _, _, decoded in results))


class FolderClips(Dataset):
    """Clips of ``frames`` model frames from decoded videos: uint8 ``[T, H, W, 3]`` and the label.

    ``random=True`` takes a random window (a new one every epoch: set :attr:`epoch`), else the
    centre window. A video shorter than ``frames`` is padded by repeating its last frame, as the
    service's resampler does when a camera stalls.
    """

    def __init__(self, videos: Sequence[Video], cache: ClipCache, spec: DecodeSpec, frames: int,
                 random: bool, seed: int = 0) -> None:
        self.videos, self.cache, self.spec, self.frames = list(videos), cache, spec, frames
        self.random, self.seed, self.epoch = random, seed, 0
        self.labels = np.asarray([v.label for v in self.videos], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        video = self.videos[index]
        clip = self.cache.load(video.path, self.spec)
        if len(clip) < self.frames:
            clip = np.concatenate([clip, np.repeat(clip[-1:], self.frames - len(clip), axis=0)])
        spare = len(clip) - self.frames
        if self.random:
            start = int(np.random.default_rng([self.seed, self.epoch, index]).integers(spare + 1))
        else:
            start = spare // 2
        return torch.from_numpy(np.ascontiguousarray(clip[start : start + self.frames])), video.label

"""What each frame codec of the frame log costs and changes, on real camera clips.

    python benchmarks/frame_codecs.py                          # the clips of ../shared/media at 172 px
    python benchmarks/frame_codecs.py --size 64 --clips DIR    # another size, other clips
    python benchmarks/frame_codecs.py --codecs raw jpeg:90 jpeg:75 webp:80

Each clip is resampled to the model's 5 fps and fitted as the gateway fits it (``fit_frame``), then
every model frame is encoded with each codec of :mod:`service.store.frame_codec` (``name:quality``
for the lossy ones) and decoded back. Per codec it prints the mean bytes of a logged frame, the
encode and decode time per frame, and what the codec changes in the labels: the bundled A0
(``motion``) runs each clip through its windowed stream (as a worker does) on the raw frames and on
the decoded ones; top-1 agreement over all frames and the largest difference of a class
probability. A JSON summary (``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.store.frame_codec import LOSSLESS, decode_frame, encode_frame  # noqa: E402

DEFAULT_CLIPS = ROOT.parent / "shared" / "media"
DEFAULT_CODECS = ["raw", "png", "webp-lossless", "webp:90", "webp:80", "jpeg:95", "jpeg:90", "jpeg:80", "jpeg:70"]


def clip_frames(path: Path, size: int, fps: float = 5.0) -> list[np.ndarray]:
    """The clip's model frames: resampled to ``fps`` and fitted to ``size`` as the gateway does."""
    import av

    from model.preprocess import TimestampResampler, fit_frame

    resampler, frames = TimestampResampler(fps), []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if resampler.push(float(frame.pts * frame.time_base)):
                frames.append(np.ascontiguousarray(fit_frame(frame.to_ndarray(format="rgb24"), size)))
    return frames


def probabilities(net, frames: list[np.ndarray]) -> np.ndarray:
    """Class probabilities per frame of one stream, through the windowed stream a worker runs."""
    import torch

    from model.streaming import WindowedStream

    stream = WindowedStream(net, window=net.info.clip_frames)
    slot, rows = stream.new_slot(), []
    with torch.inference_mode():
        for pixels in frames:
            video = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(1).float().div_(255.0)  # (3, 1, H, W)
            rows.append(torch.softmax(stream.step([slot], video.unsqueeze(0))[0], dim=-1).numpy())
    return np.stack(rows)  # (T, classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="a folder of .mp4 clips")
    parser.add_argument("--size", type=int, default=172)
    parser.add_argument("--codecs", nargs="+", default=DEFAULT_CODECS, help="name or name:quality")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    import model

    torch.set_num_threads(1)
    clips = {path.name: clip_frames(path, args.size) for path in sorted(args.clips.glob("*.mp4"))}
    if not clips:
        raise SystemExit(f"no .mp4 clips in {args.clips}")
    total = sum(len(f) for f in clips.values())
    print(f"{len(clips)} clips, {total} model frames at {args.size}x{args.size}", flush=True)
    net = model.create_model("movinet_a0_stream", weights="motion").eval()
    reference = {name: probabilities(net, frames) for name, frames in clips.items()}
    summary: dict = {"size": args.size, "clips": {n: len(f) for n, f in clips.items()}, "codecs": {}}
    for spec in args.codecs:
        codec, _, quality = spec.partition(":")
        quality = int(quality or 90)
        sizes, encode_s, decode_s, agree, worst = [], 0.0, 0.0, 0, 0.0
        for name, frames in clips.items():
            decoded = []
            for pixels in frames:
                started = time.perf_counter()
                data = encode_frame(pixels.tobytes(), args.size, args.size, codec, quality)
                encode_s += time.perf_counter() - started
                started = time.perf_counter()
                back = decode_frame(data, args.size, args.size, codec)
                decode_s += time.perf_counter() - started
                sizes.append(len(data))
                decoded.append(np.frombuffer(back, np.uint8).reshape(pixels.shape))
                if codec in LOSSLESS and back != pixels.tobytes():
                    raise AssertionError(f"{codec} is not lossless")
            probs = reference[name] if codec in LOSSLESS else probabilities(net, decoded)
            agree += int((probs.argmax(1) == reference[name].argmax(1)).sum())
            worst = max(worst, float(np.abs(probs - reference[name]).max()))
        row = {"bytes": round(float(np.mean(sizes))), "encode_ms": round(encode_s * 1e3 / total, 3),
               "decode_ms": round(decode_s * 1e3 / total, 3), "top1_agreement": round(agree / total, 4),
               "max_prob_diff": round(worst, 4), "frames": total}
        summary["codecs"][spec] = row
        print(f"{spec:>14}: {row['bytes'] / 1e3:6.1f} kB/frame, encode {row['encode_ms']:.2f} ms, decode "
              f"{row['decode_ms']:.2f} ms, top-1 agreement with raw {agree}/{total} ({100 * agree / total:.1f} %), "
              f"largest probability difference {worst:.4f}", flush=True)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a still frame costs before the model sees it: JPEG decode, then the fit to the model's size.

    python benchmarks/decode_fit.py                          # the test video's frames as 320x240 JPEG
    python benchmarks/decode_fit.py --video ../shared/media/carving_ice_360.mp4 --max-side 640 --sizes 172

The frames of ``--video`` (every 5th), JPEG-encoded at ``--quality`` as a browser client sends them
(at most ``--max-side`` pixels on the long side), then per frame, on one thread, the medians of
``--repeats`` rounds:

* decode: Pillow (``Image.open(...).convert("RGB")``, what ``decode_image`` did before) against
  ``service.sources.decode.decode_image`` (libjpeg-turbo through simplejpeg), and whether their
  pixels are equal;
* fit to each of ``--sizes``: the float path (``model.preprocess.prepare_frame`` back to uint8,
  what ``fit_frame`` did before) against ``model.preprocess.fit_frame`` (uint8 resize), and the
  largest and mean difference in grey levels.

Prints a JSON line per measurement; ``--json PATH`` writes them all.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.preprocess import fit_frame, prepare_frame  # noqa: E402
from service.sources.decode import decode_image  # noqa: E402


def jpeg_frames(path: Path, max_side: int, quality: int, every: int = 5) -> list[bytes]:
    frames = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every:
                continue
            scale = min(1.0, max_side / max(frame.width, frame.height))
            rgb = frame.to_ndarray(format="rgb24", width=round(frame.width * scale), height=round(frame.height * scale))
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
            frames.append(buffer.getvalue())
    if not frames:
        raise SystemExit(f"{path}: no video frames")
    return frames


def per_item_ms(fn, items: list, repeats: int) -> float:
    """Median over ``repeats`` rounds of the mean ms per item of ``fn(item)``."""
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        rounds.append((time.perf_counter() - start) * 1000 / len(items))
    return round(statistics.median(rounds), 3)


def pillow_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def float_fit(rgb: np.ndarray, size: int) -> np.ndarray:
    return (prepare_frame(rgb, size).permute(1, 2, 0) * 255.0).round_().to(torch.uint8).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=ROOT / "tests" / "assets" / "motion_test.mp4")
    parser.add_argument("--max-side", type=int, default=320, help="long side of the JPEG frames (default 320)")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 172], help="model input sizes to fit to")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames = jpeg_frames(args.video, args.max_side, args.quality)
    decoded = [decode_image(data, 10**9) for data in frames]
    height, width = decoded[0].shape[:2]
    rows = [{
        "measure": "decode", "frames": len(frames), "frame": f"{width}x{height}",
        "jpeg_bytes_mean": round(statistics.mean(len(f) for f in frames)),
        "pillow_ms": per_item_ms(pillow_decode, frames, args.repeats),
        "decode_image_ms": per_item_ms(lambda data: decode_image(data, 10**9), frames, args.repeats),
        "pixels_equal": all(np.array_equal(a, pillow_decode(f)) for a, f in zip(decoded, frames)),
    }]
    print(json.dumps(rows[-1]), flush=True)
    for size in args.sizes:
        diffs = [np.abs(fit_frame(rgb, size).astype(np.int16) - float_fit(rgb, size)) for rgb in decoded]
        rows.append({
            "measure": "fit", "size": size, "frame": f"{width}x{height}",
            "float_ms": per_item_ms(lambda rgb, size=size: float_fit(rgb, size), decoded, args.repeats),
            "uint8_ms": per_item_ms(lambda rgb, size=size: fit_frame(rgb, size), decoded, args.repeats),
            "max_grey_levels": int(max(d.max() for d in diffs)),
            "mean_grey_levels": round(float(np.mean([d.mean() for d in diffs])), 4),
        })
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

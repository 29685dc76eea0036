"""A Python client and the ``movinet-client`` CLI: stream a video file, an RTSP URL or a webcam.

    movinet-client stream clip.mp4 --url http://127.0.0.1:8000
    movinet-client stream rtsp://camera/stream --url http://host:8000 --api-key KEY
    movinet-client stream --webcam

The client decodes the source with PyAV, keeps one frame per slot of the model's frame grid
(so only frames the model will see are sent), downsizes them, and sends each as a JPEG with its
pts. Files are sent in real time by default; ``--fast`` sends as fast as the server keeps up
(a few frames in flight, no drops). Labels are printed as they come back.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from PIL import Image

from service.media import Resampler


@dataclass
class StreamSummary:
    session_id: str
    frames_sent: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # send of a frame -> its label, client clock
    close_code: int | None = None
    complete: bool = False

    @property
    def dropped(self) -> int:
        return self.results[-1]["dropped"] if self.results else 0

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


def open_source(source: str, webcam: bool = False) -> av.container.InputContainer:
    if webcam:
        if sys.platform == "darwin":
            return av.open(source or "0", format="avfoundation", options={"framerate": "30"})
        return av.open(source or "/dev/video0", format="v4l2")
    if source.startswith(("rtsp://", "rtsps://")):
        return av.open(source, options={"rtsp_transport": "tcp", "timeout": "5000000",
                                        "analyzeduration": "200000", "probesize": "32768"})
    return av.open(source)


def model_frames(container: av.container.InputContainer, fps: float, max_side: int = 320
                 ) -> Iterator[tuple[float, list[int], np.ndarray]]:
    """(pts seconds, model-grid slots, RGB frame) for each decoded frame the model will see."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    resampler = Resampler(fps)
    started = time.monotonic()
    for frame in container.decode(stream):
        pts = float(frame.pts * frame.time_base) if frame.pts is not None else time.monotonic() - started
        slots = resampler.push(pts)
        if not slots:
            continue
        scale = min(1.0, max_side / max(frame.width, frame.height))
        width, height = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
        yield pts, slots, frame.to_ndarray(format="rgb24", width=width, height=height)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class MovinetClient:
    """Talks to one server: creates sessions and streams frames into them."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    async def create_session(self, **body: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            response = await http.post(f"{self.url}/sessions", json=body, headers=self.headers)
        if response.status_code != 201:
            raise RuntimeError(f"POST /sessions failed: {response.status_code} {response.text}")
        return response.json()

    async def delete_session(self, session: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            await http.delete(f"{self.url}/sessions/{session['session_id']}",
                              headers={"Authorization": f"Bearer {session['token']}"})

    async def stream(
        self,
        session: dict[str, Any],
        frames: Iterator[tuple[float, list[int], np.ndarray]],
        *,
        realtime: bool = True,
        in_flight: int = 4,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        max_frames: int | None = None,
    ) -> StreamSummary:
        """Send ``frames`` (from :func:`model_frames`) and collect what comes back.

        ``realtime``: wait for each frame's pts (relative to the first) before sending it.
        Otherwise keep at most ``in_flight`` model frames waiting for their labels.
        """
        from websockets.asyncio.client import connect

        summary = StreamSummary(session["session_id"])
        sent_at: dict[int, float] = {}  # frame_index -> monotonic send time
        slots_sent = 0
        progress = asyncio.Condition()
        url = f"{session['frames_url']}?token={session['token']}"
        async with connect(url, max_size=None, open_timeout=self.timeout) as ws:
            hello = json.loads(await ws.recv())
            if hello.get("type") == "error":
                raise RuntimeError(f"stream refused: {hello}")

            async def receive() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    now = time.monotonic()
                    if message["type"] == "result":
                        summary.results.append(message)
                        started = sent_at.pop(message["frame_index"], None)
                        if started is not None:
                            summary.latencies_ms.append((now - started) * 1000.0)
                    elif message["type"] == "error":
                        summary.errors.append(message)
                    elif message["type"] == "eos":
                        summary.complete = bool(message.get("complete"))
                    if on_message is not None:
                        on_message(message)
                    async with progress:
                        progress.notify_all()

            receiver = asyncio.create_task(receive())
            iterator = iter(frames)
            first_pts: float | None = None
            started = time.monotonic()
            base_index = None
            while max_frames is None or summary.frames_sent < max_frames:
                item = await asyncio.to_thread(next, iterator, None)
                if item is None or receiver.done():
                    break
                pts, slots, rgb = item
                if first_pts is None:
                    first_pts = pts
                if realtime:
                    delay = (pts - first_pts) - (time.monotonic() - started)
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    async with progress:
                        await progress.wait_for(
                            lambda sent=slots_sent: sent - len(summary.results) - summary.dropped < in_flight
                            or receiver.done())
                data = await asyncio.to_thread(encode_jpeg, rgb)
                if base_index is None:
                    base_index = hello.get("next_frame_index", 0)
                now = time.monotonic()
                for k in slots:
                    sent_at[k + (base_index or 0)] = now
                await ws.send(json.dumps({"type": "frame", "pts": pts}))
                await ws.send(data)
                summary.frames_sent += 1
                slots_sent += len(slots)
            await ws.send(json.dumps({"type": "eos"}))
            try:
                await asyncio.wait_for(receiver, timeout=120)
            except TimeoutError:
                receiver.cancel()
            summary.close_code = ws.close_code
        return summary


# --- CLI ------------------------------------------------------------------------------------------


def _format(message: dict[str, Any], names: int) -> str | None:
    if message["type"] == "result":
        labels = " | ".join(f"{label['name']} {label['score']:.2f}" for label in message["labels"][:names]) or "-"
        pts = f"{message['pts']:8.2f}s" if message["pts"] is not None else "       -"
        return f"{pts}  #{message['frame_index']:<5} {labels}   lag {message['lag_ms']:.0f} ms" + (
            f"  dropped {message['dropped']}" if message["dropped"] else "")
    if message["type"] == "error":
        return f"error {message['code']}: {message['message']}"
    return None


async def _stream_main(args: argparse.Namespace) -> int:
    client = MovinetClient(args.url, api_key=args.api_key)
    body: dict[str, Any] = {"top_k": args.top_k}
    if args.model:
        body["model"] = args.model
    if args.weights:
        body["weights"] = args.weights
    if args.min_score:
        body["min_score"] = args.min_score
    if args.smoothing:
        body["smoothing"] = args.smoothing
    session = await client.create_session(**body)
    print(f"session {session['session_id']}  model {session['model']} ({session['weights']})  "
          f"{session['frame_rate']:g} fps  {session['input_size']} px", file=sys.stderr)
    live = args.webcam or args.source.startswith(("rtsp://", "rtsps://"))
    container = open_source(args.source or "", webcam=args.webcam)

    def show(message: dict[str, Any]) -> None:
        line = _format(message, args.show)
        if line:
            print(line, file=sys.stderr if message["type"] == "error" else sys.stdout, flush=True)

    try:
        summary = await client.stream(session, model_frames(container, session["frame_rate"]),
                                      realtime=not args.fast and not live, on_message=show,
                                      max_frames=args.max_frames)
    finally:
        container.close()
        if not args.keep:
            await client.delete_session(session)
    p50, p99 = summary.percentile(50), summary.percentile(99)
    print(f"sent {summary.frames_sent} frames, {len(summary.results)} labels, {summary.dropped} dropped, "
          f"{len(summary.errors)} errors" + (f", latency p50 {p50:.0f} ms p99 {p99:.0f} ms" if p50 else ""),
          file=sys.stderr)
    return 0 if summary.results else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="movinet-client", description="Client for the MoViNet service.")
    commands = parser.add_subparsers(dest="command", required=True)
    stream = commands.add_parser("stream", help="stream a video file, RTSP URL or webcam and print labels")
    stream.add_argument("source", nargs="?", default="", help="video file or rtsp:// URL (device with --webcam)")
    stream.add_argument("--webcam", action="store_true", help="read the webcam (v4l2 / avfoundation)")
    stream.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    stream.add_argument("--api-key", default=None, help="API key, if the server requires one")
    stream.add_argument("--model", help="model name (default: the server's)")
    stream.add_argument("--weights", help="weights tag")
    stream.add_argument("--top-k", type=int, default=3)
    stream.add_argument("--show", type=int, default=3, help="labels printed per result")
    stream.add_argument("--min-score", type=float, default=0.0)
    stream.add_argument("--smoothing", type=float, default=0.0)
    stream.add_argument("--fast", action="store_true", help="send as fast as the server keeps up")
    stream.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    stream.add_argument("--keep", action="store_true", help="do not delete the session at the end")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "stream":
        if not args.source and not args.webcam:
            print("movinet-client stream: give a video file, an rtsp:// URL or --webcam", file=sys.stderr)
            return 2
        try:
            return asyncio.run(_stream_main(args))
        except KeyboardInterrupt:
            return 130
        except (RuntimeError, OSError, httpx.HTTPError, av.error.FFmpegError) as exc:
            print(f"movinet-client: {exc}", file=sys.stderr)
            return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())

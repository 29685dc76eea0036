"""``movinet-client``: stream a video file, an RTSP URL or a webcam and print the labels.

    movinet-client stream clip.mp4 --url http://127.0.0.1:8000
    movinet-client stream rtsp://camera/stream --url http://host:8000 --api-key KEY
    movinet-client stream --webcam
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import av
import httpx

from service.client import MovinetClient, model_frames, open_source


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
          f"{len(summary.errors)} errors" + (f", {summary.reconnects} reconnects" if summary.reconnects else "")
          + (f", latency p50 {p50:.0f} ms p99 {p99:.0f} ms" if p50 else ""),
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

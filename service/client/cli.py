"""``movinet-client``: stream a video file, an RTSP URL or a webcam and print the labels; look at
the server's models and sessions; watch a session's labels or read its events.

    movinet-client stream clip.mp4 --url http://127.0.0.1:8000
    movinet-client stream rtsp://camera/stream --url http://host:8000 --api-key KEY
    movinet-client stream --webcam
    movinet-client models
    movinet-client sessions --api-key KEY
    movinet-client watch SESSION --token TOKEN
    movinet-client events SESSION --token TOKEN

``--json`` (every command): one JSON object per line on stdout, for programs; ``stream --json``
prints every ``result``, ``event`` and ``error`` message as it comes, then a ``summary``.
Exit status: 0 done, 1 the server refused or could not be reached, 2 bad input, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import av

from service.client import ClientError, MovinetClient, model_frames, open_source

DEFAULT_URL = "http://127.0.0.1:8000"


class InputError(Exception):
    """The source cannot be read: said before any session is created."""


def open_input(source: str, webcam: bool) -> av.container.InputContainer:
    """Open the source, or raise :class:`InputError` with a message that names it."""
    live = webcam or source.startswith(("rtsp://", "rtsps://"))
    what = f"the webcam {source}".rstrip() if webcam else source
    if not live:
        path = Path(source)
        if not path.exists():
            raise InputError(f"cannot open {source}: no such file")
        if path.is_dir():
            raise InputError(f"cannot open {source}: it is a directory")
    try:
        container = open_source(source, webcam=webcam)
    except OSError as exc:  # PyAV's errors with an errno (no such device, permission denied, ...)
        raise InputError(f"cannot open {what}: {(exc.strerror or str(exc)).lower()}") from None
    except av.error.FFmpegError:
        raise InputError(f"cannot open {what}" if live else f"{source} is not a video PyAV can read") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{source} is not a video PyAV can read (no video track)")
    return container


class Printer:
    """Messages as lines: text for a person (labels on stdout, errors on stderr) or JSON lines."""

    def __init__(self, as_json: bool, names: int = 3):
        self.as_json, self.names = as_json, names

    def message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if self.as_json:
            if kind in ("result", "event", "error"):
                self.json(message)
            return
        line = self.format(message)
        if line:
            print(line, file=sys.stderr if kind == "error" else sys.stdout, flush=True)

    def json(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj, separators=(",", ":")), flush=True)

    def format(self, message: dict[str, Any]) -> str | None:
        kind = message.get("type")
        if kind == "result":
            labels = " | ".join(f"{label['name']} {label['score']:.2f}"
                                for label in message["labels"][: self.names]) or "-"
            pts = f"{message['pts']:8.2f}s" if message.get("pts") is not None else "       -"
            return f"{pts}  #{message['frame_index']:<5} {labels}   lag {message['lag_ms']:.0f} ms" + (
                f"  dropped {message['dropped']}" if message.get("dropped") else "")
        if kind == "event":
            return format_event(message)
        if kind == "error":
            return f"error {message.get('code')}: {message.get('message')}"
        if kind == "source":
            return f"source {message.get('source')}: {message.get('state')}" + (
                f" ({message['error']})" if message.get("error") else "")
        return None


def _seconds(value: Any) -> str:
    return f"{value:.2f}s" if isinstance(value, int | float) else "…"


def format_event(event: dict[str, Any]) -> str:
    label = event.get("label")
    name = label.get("name") if isinstance(label, dict) else label
    score = event.get("score")
    return (f"event {event.get('phase', '-'):<6} {name}  {_seconds(event.get('start_pts'))} → "
            f"{_seconds(event.get('end_pts'))}" + (f"  score {score:.2f}" if isinstance(score, int | float) else ""))


# --- commands ----------------------------------------------------------------------------------------


def _session_body(args: argparse.Namespace, live: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"top_k": args.top_k}
    for key in ("model", "weights"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    if args.min_score:
        body["min_score"] = args.min_score
    if args.smoothing:
        body["smoothing"] = args.smoothing
    policy = args.backpressure
    if policy == "auto":  # a recording: every frame labelled; a camera: labels about now
        policy = None if live else "block"
    if policy:
        body["backpressure"] = {"policy": policy}
    return body


async def _stream(args: argparse.Namespace, out: Printer) -> int:
    live = args.webcam or args.source.startswith(("rtsp://", "rtsps://"))
    container = open_input(args.source, args.webcam)  # before any session exists
    client = MovinetClient(args.url, api_key=args.api_key)
    try:
        session = await client.create_session(**_session_body(args, live))
    except BaseException:
        container.close()
        raise
    print(f"session {session['session_id']}  model {session['model']} ({session['weights']})  "
          f"{session['frame_rate']:g} fps  {session['input_size']} px"
          + (f"  token {session['token']} (kept)" if args.keep else ""), file=sys.stderr)
    ok = False
    try:
        summary = await client.stream(session, model_frames(container, session["frame_rate"]),
                                      realtime=not args.fast and not live, on_message=out.message,
                                      max_frames=args.max_frames)
        ok = True
    finally:
        container.close()
        if not ok or not args.keep:  # a failed run leaves nothing behind, --keep or not
            try:
                await client.delete_session(session)
            except ClientError as exc:
                print(f"movinet-client: could not delete session {session['session_id']}: {exc}", file=sys.stderr)
    p50, p99 = summary.percentile(50), summary.percentile(99)
    if out.as_json:
        out.json({"type": "summary", "session_id": summary.session_id, "frames_sent": summary.frames_sent,
                  "labels": len(summary.results), "dropped": summary.dropped, "errors": len(summary.errors),
                  "reconnects": summary.reconnects, "complete": summary.complete,
                  "latency_ms": {"p50": p50, "p99": p99},
                  **({"token": session["token"]} if args.keep else {})})  # to watch or delete it later
    print(f"sent {summary.frames_sent} frames, {len(summary.results)} labels, {summary.dropped} dropped, "
          f"{len(summary.errors)} errors" + (f", {summary.reconnects} reconnects" if summary.reconnects else "")
          + (f", latency p50 {p50:.0f} ms p99 {p99:.0f} ms" if p50 else ""),
          file=sys.stderr)
    return 0 if summary.results else 1


async def _models(args: argparse.Namespace, out: Printer) -> int:
    models = await MovinetClient(args.url).models()
    if out.as_json:
        for entry in models:
            out.json(entry)
        return 0
    print(f"{'model':<24} {'weights':<18} {'size':>5} {'fps':>5} {'clip':>5} {'classes':>8}  ")
    for m in models:
        flags = ", ".join(f for f, on in (("default", m.get("default")), ("loaded", m.get("loaded"))) if on)
        print(f"{m['name']:<24} {','.join(m['weights']):<18} {m.get('input_size') or '-':>5} "
              f"{m.get('frame_rate') or '-':>5} {m.get('clip_frames') or '-':>5} {m.get('num_classes') or '-':>8}  "
              f"{flags}")
    return 0


async def _sessions(args: argparse.Namespace, out: Printer) -> int:
    sessions = await MovinetClient(args.url, api_key=args.api_key).sessions()
    if out.as_json:
        for entry in sessions:
            out.json(entry)
        return 0
    if not sessions:
        print("no sessions", file=sys.stderr)
        return 0
    print(f"{'session':<26} {'state':<10} {'model':<24} {'received':>8} {'labelled':>8} {'dropped':>7} "
          f"{'lag ms':>7}  last label")
    for s in sessions:
        last = s.get("last_result") or {}
        top = last.get("labels") or []
        lag = f"{s['lag_ms']:.0f}" if s.get("lag_ms") is not None else "-"
        print(f"{s['session_id']:<26} {s['state']:<10} {s['model']:<24} {s['frames_received']:>8} "
              f"{s['frames_processed']:>8} {s['frames_dropped']:>7} {lag:>7}  {top[0]['name'] if top else '-'}")
    return 0


async def _watch(args: argparse.Namespace, out: Printer) -> int:
    failed: list[dict[str, Any]] = []

    def show(message: dict[str, Any]) -> None:
        if message.get("type") == "error":
            failed.append(message)
        if out.as_json and message.get("type") not in ("result", "event", "error"):
            return
        out.message(message)

    code = await MovinetClient(args.url).watch(args.session_id, args.token, show, after_seq=args.after_seq)
    fatal = [m for m in failed if m.get("code") not in ("decode_error", "store_unavailable", "internal_error")]
    if code in (1000, 4410) and not (code == 1000 and fatal):  # the session ended, or the stream did
        return 0
    reason = f"{fatal[-1]['code']}: {fatal[-1]['message']}" if fatal else "closed"
    print(f"movinet-client: the labels socket closed ({code}): {reason}", file=sys.stderr)
    return 1


async def _events(args: argparse.Namespace, out: Printer) -> int:
    client = MovinetClient(args.url, api_key=args.api_key)
    try:
        events = await client.events(args.session_id, args.token)
    except ClientError as exc:
        if exc.status == 404 and exc.code == "not_found":  # the route, not the session
            raise ClientError(f"{exc} (this server has no events route: it is older than this client)",
                              exc.status, exc.code) from None
        raise
    for event in events:
        if out.as_json:
            out.json(event)
        else:
            print(format_event(event))
    if not events and not out.as_json:
        print("no events yet", file=sys.stderr)
    return 0


COMMANDS = {"stream": _stream, "models": _models, "sessions": _sessions, "watch": _watch, "events": _events}


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="movinet-client", description=__doc__.split("\n\n")[0],
                                     formatter_class=formatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, help="the server's base URL")
    common.add_argument("--json", action="store_true", help="print one JSON object per line on stdout")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stream = commands.add_parser("stream", parents=[common], formatter_class=formatter,
                                 help="stream a video file, RTSP URL or webcam and print labels",
                                 description="Stream a video file, an RTSP URL or a webcam into a new session "
                                 "and print the labels as they come. The source is opened before the session "
                                 "is created; the session is deleted at the end (and on any failure).")
    stream.add_argument("source", nargs="?", default="", help="video file or rtsp:// URL (device with --webcam)")
    stream.add_argument("--webcam", action="store_true", help="read the webcam (v4l2 / avfoundation)")
    stream.add_argument("--api-key", default=None, help="API key, if the server requires one")
    stream.add_argument("--model", default=None, help="model name (none: the server's default)")
    stream.add_argument("--weights", default=None, help="weights tag (none: the model's first)")
    stream.add_argument("--top-k", type=int, default=3, help="labels per result")
    stream.add_argument("--show", type=int, default=3, help="labels printed per result")
    stream.add_argument("--min-score", type=float, default=0.0, help="leave out labels scored below this")
    stream.add_argument("--smoothing", type=float, default=0.0, help="exponential smoothing of scores (0 = off)")
    stream.add_argument("--backpressure", choices=["auto", "block", "drop_oldest", "newest_only"], default="auto",
                        help="when inference falls behind; auto: block for a file (every frame labelled), "
                        "the server's default for a camera")
    stream.add_argument("--fast", action="store_true",
                        help="send a file as fast as the server keeps up, not in real time")
    stream.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (none: all)")
    stream.add_argument("--keep", action="store_true", help="do not delete the session at the end")

    commands.add_parser("models", parents=[common], formatter_class=formatter,
                        help="list the models sessions can use (GET /models)")

    sessions = commands.add_parser("sessions", parents=[common], formatter_class=formatter,
                                   help="list the server's sessions (GET /sessions)")
    sessions.add_argument("--api-key", default=None, help="API key, if the server requires one")

    watch = commands.add_parser("watch", parents=[common], formatter_class=formatter,
                                help="print a session's labels as they come (its labels socket)")
    watch.add_argument("session_id", metavar="SESSION", help="the session id")
    watch.add_argument("--token", required=True, help="the session's token")
    watch.add_argument("--after-seq", type=int, default=None,
                       help="first replay the retained results after this seq (none: only new ones)")

    events = commands.add_parser("events", parents=[common], formatter_class=formatter,
                                 help="print a session's label events (GET /sessions/{id}/events)")
    events.add_argument("session_id", metavar="SESSION", help="the session id")
    events.add_argument("--token", default=None, help="the session's token")
    events.add_argument("--api-key", default=None, help="API key, instead of the token")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "stream" and not args.source and not args.webcam:
        print("movinet-client stream: give a video file, an rtsp:// URL or --webcam", file=sys.stderr)
        return 2
    if args.command == "events" and not (args.token or args.api_key):
        print("movinet-client events: give --token (or --api-key)", file=sys.stderr)
        return 2
    out = Printer(args.json, getattr(args, "show", 3))
    try:
        return asyncio.run(COMMANDS[args.command](args, out))
    except KeyboardInterrupt:
        return 130
    except InputError as exc:
        print(f"movinet-client: {exc}", file=sys.stderr)
        return 2
    except (ClientError, RuntimeError, OSError, av.error.FFmpegError) as exc:
        print(f"movinet-client: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

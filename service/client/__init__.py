"""The Python client of the service (:class:`MovinetClient`); the ``movinet-client`` command is
:mod:`service.client.cli`.

The client decodes the source with PyAV, keeps one frame per slot of the model's frame grid
(so only frames the model will see are sent), downsizes them, and sends each as a JPEG with its
pts. Files are sent in real time by default; ``--fast`` sends as fast as the server keeps up
(a few frames in flight, no drops). Labels are printed as they come back.

Every HTTP call goes through :meth:`MovinetClient.request`, which turns a refusal into a
:class:`ClientError` that names the route, the status and the server's error code, and a
server that cannot be reached into one that names its URL.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from PIL import Image

from service.sources.frames import Resampler


class ClientError(RuntimeError):
    """The server refused a request, or cannot be reached; the message says which, for a person."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


def unreachable_reason(exc: BaseException) -> str:
    """``connection refused``, ``name or service not known``, ``timed out``... from a transport error."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timed out"
    seen: BaseException | None = exc
    while seen is not None:  # httpx wraps the OSError that says what happened
        if isinstance(seen, OSError) and seen.errno:
            text = seen.strerror if seen.errno < 0 else os.strerror(seen.errno)
            return (text or str(seen)).lower()
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _refusal(method: str, path: str, response: httpx.Response) -> ClientError:
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = None, response.text[:200] or response.reason_phrase
    return ClientError(f"{method} {path}: {response.status_code} {code + ': ' if code else ''}{message}",
                       status=response.status_code, code=code)


@dataclass
class StreamSummary:
    session_id: str
    frames_sent: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # send of a frame -> its label, client clock
    close_code: int | None = None
    complete: bool = False
    reconnects: int = 0

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

    async def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> Any:
        """One HTTP call; the decoded JSON answer (None for 204). ``token``: a session's, instead
        of the API key. Raises :class:`ClientError`."""
        headers = {"Authorization": f"Bearer {token}"} if token else self.headers
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.request(method, self.url + path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the server at {self.url}: {unreachable_reason(exc)}") from None
        if response.status_code >= 400:
            raise _refusal(method, path, response)
        return response.json() if response.content else None

    async def create_session(self, **body: Any) -> dict[str, Any]:
        return await self.request("POST", "/sessions", json=body)

    async def delete_session(self, session: dict[str, Any]) -> None:
        await self.request("DELETE", f"/sessions/{session['session_id']}", token=session["token"])

    async def models(self) -> list[dict[str, Any]]:
        """``GET /models``: every model a session can use, with its weights."""
        return (await self.request("GET", "/models"))["models"]

    async def model_labels(self, name: str, weights: str | None = None) -> list[str]:
        params = {"weights": weights} if weights else None
        return (await self.request("GET", f"/models/{name}/labels", params=params))["labels"]

    async def sessions(self, page_size: int = 200) -> list[dict[str, Any]]:
        """``GET /sessions``, every page (needs the API key where the server has keys)."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self.request("GET", "/sessions", params={"limit": page_size,
                                                                  **({"cursor": cursor} if cursor else {})})
            found += page["sessions"]
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    async def session(self, session_id: str, token: str | None = None) -> dict[str, Any]:
        return await self.request("GET", f"/sessions/{session_id}", token=token)

    async def events(self, session_id: str, token: str | None = None) -> list[dict[str, Any]]:
        """``GET /sessions/{id}/events``: the session's label segments (``start``/``update``/``end``)."""
        return (await self.request("GET", f"/sessions/{session_id}/events", token=token))["events"]

    async def watch(self, session_id: str, token: str, on_message: Callable[[dict[str, Any]], None],
                    after_seq: int | None = None) -> int:
        """Read the labels socket until the server closes it; every message to ``on_message``.
        Returns the close code. Raises :class:`ClientError` when it cannot connect."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        url = "ws" + self.url[4:] if self.url.startswith("http") else self.url
        url += f"/sessions/{session_id}/labels" + (f"?after_seq={after_seq}" if after_seq is not None else "")
        try:
            async with connect(url, max_size=None, open_timeout=self.timeout,
                               additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                try:
                    async for raw in ws:
                        on_message(json.loads(raw))
                except ConnectionClosed:
                    pass
                return ws.close_code or 1006
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ClientError(f"cannot reach the server at {self.url}: {unreachable_reason(exc)}") from None

    async def stream(
        self,
        session: dict[str, Any],
        frames: Iterator[tuple[float, list[int], np.ndarray]],
        *,
        realtime: bool = True,
        in_flight: int = 4,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        max_frames: int | None = None,
        reconnect_for: float = 30.0,
    ) -> StreamSummary:
        """Send ``frames`` (from :func:`model_frames`) and collect what comes back.

        ``realtime``: wait for each frame's pts (relative to the first) before sending it.
        Otherwise keep at most ``in_flight`` model frames waiting for their labels.

        When the socket drops for a reason that passes (the server restarting: 1012, 1006; the
        state store away: 1013; a dead gateway's producer slot not yet free: 4409), the client
        reconnects with backoff for up to ``reconnect_for`` seconds, resumes the labels after
        the last one it got (``after_seq``) and goes on with the next frame. A frame that was in
        flight when the socket dropped may be lost.
        """
        from websockets.exceptions import ConnectionClosed

        run = _Run(StreamSummary(session["session_id"]), iter(frames), realtime, in_flight, on_message, max_frames)
        failing_since: float | None = None
        backoff = 0.5
        while True:
            try:
                if await self._connect_once(session, run):
                    return run.summary
                failing_since = None  # connected and worked: a later drop gets the full patience
                backoff = 0.5
            except (ConnectionClosed, OSError, _Retry) as exc:
                code = exc.rcvd.code if isinstance(exc, ConnectionClosed) and exc.rcvd else None
                if code is not None and code not in RETRY_CLOSE_CODES:
                    raise RuntimeError(f"stream closed: {exc}") from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > reconnect_for:
                    raise RuntimeError(f"could not reconnect for {reconnect_for:.0f} s: {exc}") from None
                run.summary.reconnects += 1
                print(f"movinet-client: connection lost ({exc}); reconnecting", file=sys.stderr)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _connect_once(self, session: dict[str, Any], run: _Run) -> bool:
        """One connection: True when the stream ended (``eos`` answered or the source ran out)."""
        from websockets.asyncio.client import connect

        summary = run.summary
        after = summary.results[-1]["seq"] if summary.results else 0
        url = session["frames_url"] + (f"?after_seq={after}" if after else "")
        # The token in a header, never in the URL (URLs end up in access logs).
        async with connect(url, max_size=None, open_timeout=self.timeout,
                           additional_headers={"Authorization": f"Bearer {session['token']}"}) as ws:
            hello = json.loads(await ws.recv())
            if hello.get("type") == "error":
                if hello.get("code") in ("stream_in_use", "store_unavailable"):
                    raise _Retry(hello.get("message", hello["code"]))
                raise RuntimeError(f"stream refused: {hello}")
            base_index = hello.get("next_frame_index", 0)
            progress = asyncio.Condition()
            if summary.reconnects:  # frames lost with the old socket never get labels: count afresh
                run.slots_sent = len(summary.results) + summary.dropped

            async def receive() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    now = time.monotonic()
                    if message["type"] == "result":
                        summary.results.append(message)
                        started = run.sent_at.pop(message["frame_index"], None)
                        if started is not None:
                            summary.latencies_ms.append((now - started) * 1000.0)
                    elif message["type"] == "error":
                        summary.errors.append(message)
                    elif message["type"] == "eos":
                        summary.complete = bool(message.get("complete"))
                    if run.on_message is not None:
                        run.on_message(message)
                    async with progress:
                        progress.notify_all()

            receiver = asyncio.create_task(receive())
            try:
                while run.max_frames is None or summary.frames_sent < run.max_frames:
                    item = await asyncio.to_thread(next, run.frames, None)
                    if item is None or receiver.done():
                        break
                    pts, slots, rgb = item
                    if run.first_pts is None:
                        run.first_pts, run.started = pts, time.monotonic()
                    if run.realtime:
                        delay = (pts - run.first_pts) - (time.monotonic() - run.started)
                        if delay > 0:
                            await asyncio.sleep(delay)
                    else:
                        async with progress:
                            await progress.wait_for(
                                lambda: run.slots_sent - len(summary.results) - summary.dropped < run.in_flight
                                or receiver.done())
                    data = await asyncio.to_thread(encode_jpeg, rgb)
                    now = time.monotonic()
                    for k in slots:
                        run.sent_at[k + base_index] = now
                    await ws.send(json.dumps({"type": "frame", "pts": pts}))
                    await ws.send(data)
                    summary.frames_sent += 1
                    run.slots_sent += len(slots)
                if receiver.done():  # the server closed the socket while we were sending
                    receiver.result()
                    summary.close_code = ws.close_code
                    raise _Retry(f"closed by the server ({ws.close_code})") if ws.close_code in RETRY_CLOSE_CODES \
                        else RuntimeError(f"closed by the server ({ws.close_code})")
                await ws.send(json.dumps({"type": "eos"}))
                try:
                    await asyncio.wait_for(asyncio.shield(receiver), timeout=120)
                except TimeoutError:
                    pass
            finally:
                receiver.cancel()
            summary.close_code = ws.close_code
            if ws.close_code in RETRY_CLOSE_CODES and not summary.complete:
                raise _Retry(f"closed by the server ({ws.close_code}) before the end of the stream")
        return True


# Close codes after which a reconnect may work (docs/service-api.md).
RETRY_CLOSE_CODES = {1006, 1011, 1012, 1013, 4409}


class _Retry(Exception):
    """The stream can go on after a reconnect."""


@dataclass
class _Run:
    """What one :meth:`MovinetClient.stream` keeps across its connections."""

    summary: StreamSummary
    frames: Iterator[tuple[float, list[int], np.ndarray]]
    realtime: bool
    in_flight: int
    on_message: Callable[[dict[str, Any]], None] | None
    max_frames: int | None
    sent_at: dict[int, float] = field(default_factory=dict)  # frame_index -> monotonic send time
    slots_sent: int = 0
    first_pts: float | None = None
    started: float = 0.0

"""The RTSP control connection, relayed: FFmpeg talks to a loopback port of ours, we talk to the
camera's checked address, and every RTSP message the camera sends passes our checks first.

FFmpeg's RTSP demuxer follows a ``3xx`` answer's ``Location`` by itself (a new connection to any
host, outside the address check), and with UDP it sends RTP/RTCP to the ``source=`` a ``SETUP``
answer names. Neither can be turned off through its options, so the camera's answers are read
here: a redirect ends the connection with :class:`SourceRefused` (redirects are not followed); a
``Transport`` header gets ``source=`` set to the checked address (UDP goes nowhere else). Bytes
from FFmpeg go to the camera unchanged (digest authentication covers the request URI).

For ``rtsps://`` the relay makes the TLS connection (SNI with the name; no certificate check,
as FFmpeg did none either) and FFmpeg speaks plain RTSP to it. Interleaved RTP (``$`` frames)
passes through as it comes. One relay per connection, on a thread of its own; it stops when
either side closes.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import ssl
import threading
import time

from service.sources.urls import RtspUrl, SourceRefused, redact

log = logging.getLogger("service.sources.rtsp")

MAX_HEAD_BYTES = 64 * 1024  # an RTSP message head longer than this is no camera's
_STATUS = re.compile(rb"^RTSP/\d\.\d (\d{3})")
_LOCATION = re.compile(rb"(?im)^location:[ \t]*(\S+)")
_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)")
_TRANSPORT = re.compile(rb"(?im)^(transport:[ \t]*)([^\r\n]*)")


class RtspRelay:
    """``with RtspRelay(target, address, timeout) as relay:`` then open ``relay.url``."""

    def __init__(self, target: RtspUrl, address: str, timeout_s: float) -> None:
        self.target = target
        self.address = address
        self.timeout_s = timeout_s
        self.refused: SourceRefused | None = None  # why the relay ended the connection, if it did
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtsp-relay", daemon=True)
        port = self._listener.getsockname()[1]
        auth = f"{target.userinfo}@" if target.userinfo else ""
        self.url = f"rtsp://{auth}127.0.0.1:{port}{target.path_query}"

    def __enter__(self) -> RtspRelay:
        try:  # before FFmpeg starts: an unreachable camera is said as such, not as bad data
            self._upstream = self._connect()
        except OSError as exc:
            self._listener.close()
            raise SourceRefused("camera_unreachable", f"cannot connect to the camera "
                                f"({redact(self.target.host)}:{self.target.port}): {exc.strerror or exc}") from None
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)
        self._upstream.close()  # when FFmpeg never connected

    # --- the relay thread ---------------------------------------------------------------------

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            self._listener.settimeout(0.2)
            while True:  # FFmpeg's one control connection
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    client, _ = self._listener.accept()
                    break
                except TimeoutError:
                    continue
        except OSError:
            return
        finally:
            self._listener.close()  # a second connection (a redirect followed anyway) finds no one
        with client, self._upstream as upstream:
            client.settimeout(None)
            self._pump(client, upstream)

    def _connect(self) -> socket.socket:
        upstream = socket.create_connection((self.address, self.target.port), timeout=self.timeout_s)
        if self.target.scheme == "rtsps":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            name = None if _is_address(self.target.host) else self.target.host
            upstream = context.wrap_socket(upstream, server_hostname=name)
        upstream.settimeout(None)
        return upstream

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        from_camera = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([client, upstream], [], [], 0.2)
            if isinstance(upstream, ssl.SSLSocket) and upstream.pending():
                ready = [*ready, upstream]
            for sock in dict.fromkeys(ready):
                try:
                    data = sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    return
                if not data:
                    return
                if sock is client:
                    upstream.sendall(data)
                    continue
                from_camera += data
                try:
                    passed, from_camera = self._check(from_camera)
                except SourceRefused as exc:
                    self.refused = exc
                    log.warning("event=rtsp_redirect_refused url=%s reason=%s", self.target.redacted, exc.message)
                    return
                if passed:
                    client.sendall(passed)

    def _check(self, buffer: bytes) -> tuple[bytes, bytes]:
        """The whole messages at the start of ``buffer`` (checked, maybe rewritten), and the rest."""
        out = []
        while buffer:
            if buffer[:1] == b"$":  # interleaved RTP/RTCP: '$', channel, 16-bit length, payload
                if len(buffer) < 4:
                    break
                size = 4 + int.from_bytes(buffer[2:4], "big")
                if len(buffer) < size:
                    break
                out.append(buffer[:size])
                buffer = buffer[size:]
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise SourceRefused("camera_protocol_error", "the camera sent an RTSP message head over 64 KiB")
                break
            head = buffer[: end + 4]
            length = _LENGTH.search(head)
            size = end + 4 + (int(length.group(1)) if length else 0)
            if len(buffer) < size:
                break
            out.append(self._checked_head(head) + buffer[end + 4 : size])
            buffer = buffer[size:]
        return b"".join(out), buffer

    def _checked_head(self, head: bytes) -> bytes:
        status = _STATUS.match(head)
        if status and status.group(1).startswith(b"3"):
            location = _LOCATION.search(head)
            where = redact(location.group(1).decode("latin-1")[:200]) if location else "no Location"
            raise SourceRefused("camera_redirect_refused", f"the camera answered {status.group(1).decode()} "
                                f"(a redirect to {where}); redirects are not followed: give its final URL")
        return _TRANSPORT.sub(self._pinned_transport, head)

    def _pinned_transport(self, match: re.Match) -> bytes:
        specs = []
        for spec in match.group(2).split(b","):
            params = [p for p in spec.split(b";") if not p.strip().lower().startswith(b"source=")]
            specs.append(b";".join([*params, b"source=" + self.address.encode()]))
        return match.group(1) + b",".join(specs)


def _is_address(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True

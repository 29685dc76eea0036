"""The RTSP control connection, relayed: FFmpeg talks to a loopback port of ours, we talk to the
camera's checked address, and every RTSP message the camera sends passes our checks first.

FFmpeg's RTSP demuxer follows a ``3xx`` answer's ``Location`` by itself (a new connection to any
host, outside the address check), and with UDP it sends RTP/RTCP to the ``source=`` a ``SETUP``
answer names. Neither can be turned off through its options, so the camera's answers are read
here: a redirect ends the connection with :class:`SourceRefused` (redirects are not followed); a
``Transport`` header gets ``source=`` set to the checked address (UDP goes nowhere else). Bytes
from FFmpeg go to the camera unchanged (digest authentication covers the request URI).

For ``rtsps://`` the relay makes the TLS connection and FFmpeg speaks plain RTSP to it. The
camera's certificate is checked (:func:`tls_context`: the system's CAs and
``MOVINET_RTSPS_CA_FILE``, the name or address in the URL) unless ``MOVINET_RTSPS_VERIFY`` is off,
for cameras with self-signed certificates that cannot be given a CA file; FFmpeg itself checks
none by default. Interleaved RTP (``$`` frames)
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


def tls_context(verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    """How the relay talks TLS to ``rtsps://`` cameras: the certificate and name checked, or not."""
    context = ssl.create_default_context()  # the system's CAs
    if ca_file:
        context.load_verify_locations(cafile=ca_file)  # and these
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class RtspRelay:
    """``with RtspRelay(target, address, timeout) as relay:`` then open ``relay.url``."""

    def __init__(self, target: RtspUrl, address: str, timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.address = address
        self.timeout_s = timeout_s
        self.tls = tls
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
        except ssl.SSLCertVerificationError as exc:
            self._listener.close()
            raise SourceRefused("camera_tls_error", f"the camera's TLS certificate was not accepted "
                                f"({exc.verify_message or 'not trusted'}); give its CA with MOVINET_RTSPS_CA_FILE, "
                                "or turn the check off with MOVINET_RTSPS_VERIFY=false") from None
        except ssl.SSLError as exc:
            self._listener.close()
            reason = exc.reason or "the handshake failed"
            raise SourceRefused("camera_tls_error", f"no TLS connection to the camera ({reason})") from None
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
            context = self.tls or tls_context()
            # The name is what the certificate must match (an address literal is matched against
            # the certificate's IP entries, and sent as no SNI).
            name = self.target.host if context.check_hostname or not _is_address(self.target.host) else None
            upstream = context.wrap_socket(upstream, server_hostname=name)
        upstream.settimeout(None)
        return upstream

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        # Non-blocking towards the camera: over TLS 1.3 a readable socket may hold only a session
        # ticket, and a blocking read would then wait for the camera while FFmpeg's request waits here.
        upstream.setblocking(False)
        from_camera = b""
        while not self._stop.is_set():
            buffered = isinstance(upstream, ssl.SSLSocket) and upstream.pending() > 0  # decrypted, not read yet
            ready, _, _ = select.select([client, upstream], [], [], 0 if buffered else 0.2)
            if buffered:
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
                    if not self._send(upstream, data):
                        return
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

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        """All of ``data`` to the non-blocking ``sock``; False when it is gone (or the relay stops)."""
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                view = view[sock.send(view):]
            except ssl.SSLWantReadError:  # TLS needs the peer's bytes first (renegotiation)
                select.select([sock], [], [], 0.2)
            except (ssl.SSLWantWriteError, BlockingIOError):  # the send buffer is full: wait for room only
                select.select([], [sock], [], 0.2)
            except OSError:
                return False
        return not view

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

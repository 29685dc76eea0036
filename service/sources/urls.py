"""Which camera URLs the server opens, and how: the RTSP source's security policy.

Only ``rtsp://`` and ``rtsps://``; FFmpeg gets a protocol whitelist (no ``file:``, no HTTP, no
other protocol reachable through the URL or a redirect) and the forced ``rtsp`` demuxer; the host
is resolved here and, unless ``MOVINET_RTSP_ALLOW_PRIVATE_ADDRESSES`` is set, every address must
be a public one — IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo)
are judged by the address they embed. The name is resolved once per connection (:func:`pin`) and
the connection goes to the address that was checked — FFmpeg for ``rtsp://`` and ``rtsps://``,
httpx for webhooks (Host header and SNI keep the name) — so no second lookup that DNS rebinding
could answer differently. Credentials in URLs are never logged
nor returned: :func:`redact` hides them in everything that leaves the RTSP source.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from service.errors import ApiError, public_reason, shown

SCHEMES = {"rtsp": 554, "rtsps": 322}
# What FFmpeg may open for an RTSP URL: the control connection (tcp, tls for rtsps) and the
# media (rtp/srtp over udp, or interleaved in the tcp connection). Nothing else: no file, no http.
PROTOCOL_WHITELIST = "rtsp,rtsps,rtp,srtp,udp,tcp,tls"

_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
_USERINFO = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:%]*$")
_URL_CREDENTIALS = re.compile(r"(?i)\b((?:rtsps?|https?)://)[^\s/?#@]*@")
_SECRET_KEYS = re.compile(r"(?i)user|pass|pwd|token|key|auth|secret|sig|cred")


class SourceRefused(Exception):
    """A URL the server will not open; ``code`` is the API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_api_error(self) -> ApiError:
        return ApiError(422, self.code, self.message)


def redact(text: str) -> str:
    """``text`` without credentials: ``rtsp://user:pass@host`` → ``rtsp://***@host``, secret-looking
    query values → ``***``. Applied to every URL and error message that leaves this module."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)

    def hide_query(match: re.Match) -> str:
        pairs = parse_qsl(match.group(2), keep_blank_values=True)
        return match.group(1) + urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs],
                                          safe="*/:,")

    return re.sub(r"((?:rtsps?|https?)://[^\s?#]*\?)([^\s#']*)", hide_query, text, flags=re.IGNORECASE)


@dataclass(frozen=True)
class RtspUrl:
    """A syntactically checked RTSP URL, split. ``url`` is secret (it may hold credentials)."""

    url: str
    scheme: str
    userinfo: str  # "" or "user:password" (percent-encoded as given)
    host: str  # hostname or IP literal, without brackets
    port: int
    path_query: str  # path + "?" + query, as given

    @property
    def redacted(self) -> str:
        return redact(self.url)

    def with_host(self, host: str) -> str:
        """The URL FFmpeg opens, its host replaced by ``host`` (a checked address)."""
        literal = f"[{host}]" if ":" in host else host
        auth = f"{self.userinfo}@" if self.userinfo else ""
        return f"{self.scheme}://{auth}{literal}:{self.port}{self.path_query}"


WEBHOOK_SCHEMES = {"http": 80, "https": 443}


def parse_url(url: str, schemes: dict[str, int] = SCHEMES) -> RtspUrl:
    """Syntax only (no DNS): one of ``schemes`` (rtsp:// or rtsps:// by default; a webhook's
    http:// or https://), a plain host name or IP, a port, no odd characters."""
    if len(url) > 2048 or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise SourceRefused("url_not_allowed", "the URL is too long or contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SourceRefused("url_not_allowed", f"not a valid URL: {public_reason(exc, 80)}") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise SourceRefused("url_not_allowed", "only " + " and ".join(f"{s}://" for s in schemes)
                            + " URLs are accepted" + (f", not {shown(scheme)}:" if scheme else ""))
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = parts.hostname or ""
    if not at:
        userinfo = ""
    if not host:
        raise SourceRefused("url_not_allowed", "the URL has no host")
    if "\\" in url or not _USERINFO.match(userinfo):
        raise SourceRefused("url_not_allowed", "the URL's user information has characters that are not allowed")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.match(host):
            raise SourceRefused("url_not_allowed", "the host must be a DNS name or an IP address") from None
    path_query = parts.path or "/"
    if parts.query:
        path_query += "?" + parts.query
    return RtspUrl(url=url, scheme=scheme, userinfo=userinfo, host=host, port=port or schemes[scheme],
                   path_query=path_query)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed by some)
        return ipaddress.IPv4Address(int(ip))
    return None


def address_allowed(address: str) -> bool:
    """Public unicast addresses only: no private, loopback, link-local, shared, reserved or multicast,
    also when an IPv6 form embeds such an IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return embedded.is_global and not embedded.is_multicast
    return ip.is_global and not ip.is_multicast


def lookup(host: str, port: int) -> list[str]:
    """The host's addresses, in the resolver's order, each once. Blocking (DNS). The one place
    the service resolves a source's or a webhook's name (a test plays a rebinding DNS here)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def pin(target: RtspUrl, allow_private: bool) -> str:
    """Resolve the host once, check every address it has, and return the one to connect to: the
    caller connects to that address, never to the name again (a second DNS answer, a rebinding
    one, is never asked for). Blocking (DNS)."""
    try:
        addresses = lookup(target.host, target.port)
    except (OSError, UnicodeError) as exc:
        raise SourceRefused("host_not_found", f"cannot resolve the URL's host: {public_reason(exc)}") from None
    if not addresses:
        raise SourceRefused("host_not_found", "the URL's host has no address")
    if not allow_private:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise SourceRefused(
                "address_not_allowed",
                f"the URL's address {refused[0]} is private, loopback, link-local or reserved; "
                "the server only opens public addresses (setting MOVINET_RTSP_ALLOW_PRIVATE_ADDRESSES)")
    return addresses[0]


def resolve(target: RtspUrl, allow_private: bool) -> str:
    """The URL FFmpeg is to open: the host replaced by its checked address (:func:`pin`). Also for
    ``rtsps://``: FFmpeg's RTSP demuxer opens its TLS connection without certificate checks
    (``tls_verify`` is off and cannot be set through it), so the name bought no verification;
    what the address costs is SNI, which cameras do not need. Blocking (DNS)."""
    return target.with_host(pin(target, allow_private))


async def check_source(url: str, allow_private: bool) -> RtspUrl:
    """At session creation: the URL's syntax, then its addresses; refusals are 422 API errors."""
    try:
        target = parse_url(url)
        await asyncio.get_running_loop().run_in_executor(None, resolve, target, allow_private)
    except SourceRefused as exc:
        raise exc.to_api_error() from None
    return target


async def check_webhook(url: str, allow_private: bool) -> RtspUrl:
    """A session's webhook URL (http:// or https://), checked like a camera's: syntax, then every
    address it resolves to; refusals are 422 API errors."""
    try:
        target = parse_url(url, WEBHOOK_SCHEMES)
        await asyncio.get_running_loop().run_in_executor(None, resolve, target, allow_private)
    except SourceRefused as exc:
        raise exc.to_api_error() from None
    return target

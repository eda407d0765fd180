"""A job's media fetched from a URL (``source_url``), safely: the worker's side of item 5.

The API checks only the URL's form and policy (``check_source_url``): https, a host, and no
literal private address. The worker fetches (``fetch_source_url``): the host is resolved once,
every address it resolves to must be public (loopback, private, link-local, cloud metadata,
multicast and reserved ranges are refused), and the connection goes to the address that was
checked, with the name kept for TLS (SNI, certificate) and the Host header, so a second DNS
answer cannot point the fetch elsewhere (rebinding). Redirects are followed by hand, each hop
checked the same way; the body is capped while it streams, and the whole fetch is timed.

``source_url_allow_loopback`` (tests only) also admits http and IPv4 loopback hosts; private,
link-local and metadata addresses are refused whatever the settings. A certificate that is not
valid for the URL's name fails with ``source_url_certificate_invalid``; ``source_url_ca_file``
adds a private CA to the public ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import certifi
import httpx

from polydub.errors import ConfigurationError, InvalidInput
from polydub.settings import Settings

MAX_URL_CHARS = 2048
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Fetched:
    """What was downloaded: the final URL (after redirects), its size and its content type."""

    url: str
    size: int
    content_type: str | None
    filename: str | None


def _refused(message: str) -> InvalidInput:
    return InvalidInput(message, code="source_url_refused")


# NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 address a gateway reaches.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# NAT64's local-use prefix (RFC 8215): where the IPv4 address sits depends on the operator's
# prefix length, which cannot be known here, so the whole range is refused.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches through a translator or tunnel, if any:
    IPv4-mapped, NAT64 (well-known prefix), 6to4, or a Teredo client."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        # An IPv6 address that leads to an IPv4 one (::ffff:10.0.0.1, 64:ff9b::a00:1,
        # 2002:a00:1::) is judged as that IPv4 address: else it would reach 10.0.0.1 anyway.
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def _allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, settings: Settings) -> bool:
    if _is_public(ip):
        return True
    return (
        settings.source_url_allow_loopback
        and isinstance(ip, ipaddress.IPv4Address)
        and ip.is_loopback
    )


def check_source_url(url: str, settings: Settings) -> str:
    """The URL if its form and policy allow a fetch (no network): https (http too when
    allow_loopback), a host, no credentials, and no literal private address or localhost."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidInput(
            f"source_url is longer than {MAX_URL_CHARS} characters", code="invalid_source_url"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # a bad port raises ValueError here
    except ValueError:
        raise InvalidInput("source_url is not a valid URL", code="invalid_source_url") from None
    allowed = {"https", "http"} if settings.source_url_allow_loopback else {"https"}
    if parts.scheme.lower() not in allowed:
        raise _refused("source_url must be an https URL")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise InvalidInput("source_url names no host", code="invalid_source_url")
    if parts.username is not None or parts.password is not None:
        raise _refused("source_url may not carry credentials")
    if host == "localhost" or host.endswith(".localhost"):
        raise _refused("source_url may not point at this host")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return url
    if not _allowed(literal, settings):
        raise _refused("source_url may not point at a private, loopback or metadata address")
    return url


async def _resolve(host: str, port: int, settings: Settings) -> str:
    """The one address the fetch connects to, after every address of the name was checked."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidInput(
            f"source_url host {host!r} does not resolve", code="source_url_unreachable"
        ) from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise InvalidInput(
            f"source_url host {host!r} has no address", code="source_url_unreachable"
        )
    if not all(_allowed(a, settings) for a in addresses):
        raise _refused(f"source_url host {host!r} resolves to a private or metadata address")
    return str(addresses[0])


def _pinned(url: str, address: str) -> tuple[str, str]:
    """The URL with its host replaced by the checked address, and the Host header value."""
    parts = urlsplit(url)
    host_header = parts.netloc.rsplit("@", 1)[-1]
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), host_header


async def _download(url: str, dest: Path, settings: Settings, cap: int) -> Fetched:
    verify = await tls_context(settings.source_url_ca_file)
    for _hop in range(settings.source_url_max_redirects + 1):
        check_source_url(url, settings)
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        address = await _resolve(host, port, settings)
        target, host_header = _pinned(url, address)
        # A client per hop: httpx pools connections by the pinned address, so a redirect to
        # another name on the same address would reuse a connection whose certificate was
        # checked for the first name. A fresh connection verifies each hop's own name.
        async with httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(settings.source_url_timeout_seconds),
            verify=verify,
        ) as client:
            request = client.build_request(
                "GET",
                target,
                headers={"Host": host_header},
                extensions={"sni_hostname": host} if parts.scheme.lower() == "https" else {},
            )
            response = await client.send(request, stream=True)
            fetched = await _receive(response, url, dest, cap)
        if fetched is not None:
            return fetched
        location = response.headers.get("location")
        if not location:
            raise InvalidInput("source_url redirected nowhere", code="source_url_unreachable")
        url = urljoin(url, location)
    raise _refused(f"source_url redirected more than {settings.source_url_max_redirects} times")


async def _receive(response: httpx.Response, url: str, dest: Path, cap: int) -> Fetched | None:
    """The body written to ``dest``, or None for a redirect (the caller follows it)."""
    try:
        if response.status_code in _REDIRECTS:
            return None
        if response.status_code != 200:
            raise InvalidInput(
                f"source_url answered HTTP {response.status_code}",
                code="source_url_unreachable",
            )
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise _too_large(cap)
        size = 0
        with dest.open("wb") as out:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:  # a server that lied about, or never sent, its length
                    raise _too_large(cap)
                out.write(chunk)
        name = Path(urlsplit(url).path).name or None
        return Fetched(url, size, response.headers.get("content-type"), name)
    finally:
        await response.aclose()


def _too_large(cap: int) -> InvalidInput:
    return InvalidInput(
        f"source_url's body is larger than {cap} bytes", code="source_url_too_large"
    )


async def fetch_source_url(url: str, dest: Path, settings: Settings) -> Fetched:
    """Download ``url`` to ``dest`` under the policy above; InvalidInput with a typed code
    (source_url_disabled, _refused, _unreachable, _too_large, _timeout) when it cannot."""
    if not settings.source_url_enabled:
        raise InvalidInput(
            "fetching a source_url is not enabled on this server", code="source_url_disabled"
        )
    cap = min(settings.source_url_max_bytes, settings.media_max_bytes)
    timeout = settings.source_url_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            return await _download(url, dest, settings, cap)
    except BaseException as exc:
        await asyncio.to_thread(_discard, dest)  # no partial body is left for anyone to read
        if isinstance(exc, TimeoutError):
            raise InvalidInput(
                f"fetching source_url took over {timeout:g} s", code="source_url_timeout"
            ) from None
        if isinstance(exc, httpx.HTTPError) and _untrusted(exc):
            raise InvalidInput(
                f"source_url's TLS certificate is not valid for its host: {_untrusted(exc)}",
                code="source_url_certificate_invalid",
            ) from exc
        if isinstance(exc, httpx.HTTPError):
            raise InvalidInput(
                f"source_url could not be fetched: {type(exc).__name__}",
                code="source_url_unreachable",
            ) from exc
        raise


# One context per CA file, built once (off the event loop: certifi's bundle takes a while to
# parse) and shared by every fetch; a changed file is read again only by a new process.
_TLS_CONTEXTS: dict[str | None, ssl.SSLContext] = {}


async def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The public CAs (certifi), plus ``ca_file``'s; the hostname is checked against the URL's
    name (sent as SNI) though the connection goes to the pinned address. A CA file that is
    missing or not PEM certificates is ConfigurationError ``source_url_ca_file_invalid``."""
    context = _TLS_CONTEXTS.get(ca_file)
    if context is None:
        context = await asyncio.to_thread(_build_tls_context, ca_file)
        _TLS_CONTEXTS[ca_file] = context
    return context


def _build_tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"source_url_ca_file {ca_file!r} cannot be loaded as PEM CA certificates: {exc}",
                code="source_url_ca_file_invalid",
            ) from exc
    return context


def _untrusted(exc: BaseException) -> str | None:
    """The verification failure behind an httpx error, if a certificate was refused."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)

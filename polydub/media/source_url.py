"""A job's media fetched from a URL (``source_url``), safely: the worker's side of item 5.

The API checks only the URL's form and policy (``check_source_url``): https, a host, and no
literal private address. The worker fetches (``fetch_source_url``): the host is resolved once,
every address it resolves to must be public (loopback, private, link-local, cloud metadata,
multicast and reserved ranges are refused), and the connection goes to the address that was
checked, with the name kept for TLS (SNI, certificate) and the Host header, so a second DNS
answer cannot point the fetch elsewhere (rebinding). Redirects are followed by hand, each hop
checked the same way; the body is capped while it streams, and the whole fetch is timed.

``source_url_allow_loopback`` (tests only) also admits http and IPv4 loopback hosts; private,
link-local and metadata addresses are refused whatever the settings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from polydub.errors import InvalidInput
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


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # An IPv4 address mapped into IPv6 (::ffff:127.0.0.1) is judged as the IPv4 one.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
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


async def _download(
    client: httpx.AsyncClient, url: str, dest: Path, settings: Settings, cap: int
) -> Fetched:
    for _hop in range(settings.source_url_max_redirects + 1):
        check_source_url(url, settings)
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        address = await _resolve(host, port, settings)
        target, host_header = _pinned(url, address)
        request = client.build_request(
            "GET",
            target,
            headers={"Host": host_header},
            extensions={"sni_hostname": host} if parts.scheme.lower() == "https" else {},
        )
        response = await client.send(request, stream=True)
        try:
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise InvalidInput(
                        "source_url redirected nowhere", code="source_url_unreachable"
                    )
                url = urljoin(url, location)
                continue
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
            name = Path(parts.path).name or None
            return Fetched(url, size, response.headers.get("content-type"), name)
        finally:
            await response.aclose()
    raise _refused(f"source_url redirected more than {settings.source_url_max_redirects} times")


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
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=httpx.Timeout(timeout)
            ) as client,
        ):
            return await _download(client, url, dest, settings, cap)
    except BaseException as exc:
        await asyncio.to_thread(_discard, dest)  # no partial body is left for anyone to read
        if isinstance(exc, TimeoutError):
            raise InvalidInput(
                f"fetching source_url took over {timeout:g} s", code="source_url_timeout"
            ) from None
        if isinstance(exc, httpx.HTTPError):
            raise InvalidInput(
                f"source_url could not be fetched: {type(exc).__name__}",
                code="source_url_unreachable",
            ) from exc
        raise


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)

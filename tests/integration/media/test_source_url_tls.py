"""fetch_source_url over https against a real local TLS server: the fetch connects to the
address it checked, yet sends the URL's name as SNI and Host and verifies the certificate
against that name. The server's certificate comes from a test CA that only the fetch's
``source_url_ca_file`` trusts; the host is this machine's own name, which resolves to
127.0.0.1 (admitted by the test-only ``source_url_allow_loopback``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from polydub.errors import InvalidInput
from polydub.media.source_url import fetch_source_url
from polydub.settings import Settings
from tests.media import make_audio, tone
from tests.tls_server import LocalCA, TlsServer, make_ca, serving_tls

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Https:
    name: str  # a host name (not a literal) that resolves to loopback
    clip: bytes
    ca: LocalCA
    folder: Path

    def settings(self, *, trust: bool = True) -> Settings:
        return Settings(
            source_url_enabled=True,
            source_url_allow_loopback=True,
            source_url_ca_file=str(self.ca.cert_file) if trust else None,
        )


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Https:
    folder = tmp_path_factory.mktemp("tls")
    name = socket.gethostname().lower()
    resolved = {str(i[4][0]) for i in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    assert resolved and all(ipaddress.ip_address(a).is_loopback for a in resolved), resolved
    clip = make_audio(folder / "clip.wav", tone(1.0, 440.0, sample_rate=16000), 16000)
    return Https(name, clip.read_bytes(), make_ca(folder), folder)


@pytest.fixture(scope="module")
def server(https: Https) -> Iterator[TlsServer]:
    cert, key = https.ca.issue(https.name, https.folder)
    with serving_tls(https.clip, cert, key) as served:
        yield served


async def test_https_sends_the_name_as_sni_and_host_and_verifies_it(
    https: Https, server: TlsServer, tmp_path: Path
) -> None:
    dest = tmp_path / "got"
    url = f"https://{https.name}:{server.port}/clip.wav"
    before = len(server.sni)
    fetched = await fetch_source_url(url, dest, https.settings())
    assert await asyncio.to_thread(dest.read_bytes) == https.clip
    assert fetched.size == len(https.clip) and fetched.url == url
    # Connected to the pinned 127.0.0.1, but TLS and HTTP both name the host.
    assert server.sni[before:] == [https.name]
    assert server.hosts[-1] == f"{https.name}:{server.port}"


async def _refusal(url: str, settings: Settings, dest: Path) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        await fetch_source_url(url, dest, settings)
    assert not await asyncio.to_thread(dest.exists)
    return caught.value


async def test_a_certificate_from_an_untrusted_ca_is_refused(
    https: Https, server: TlsServer, tmp_path: Path
) -> None:
    url = f"https://{https.name}:{server.port}/clip.wav"
    hosts = len(server.hosts)
    refused = await _refusal(url, https.settings(trust=False), tmp_path / "x")
    assert refused.code == "source_url_certificate_invalid", refused
    assert len(server.hosts) == hosts  # no request was sent


async def test_a_certificate_for_another_name_is_refused(https: Https, tmp_path: Path) -> None:
    cert, key = https.ca.issue("media.example.com", https.folder)
    with serving_tls(https.clip, cert, key) as other:
        url = f"https://{https.name}:{other.port}/clip.wav"
        refused = await _refusal(url, https.settings(), tmp_path / "x")
        assert refused.code == "source_url_certificate_invalid", refused
        assert "hostname" in str(refused).lower(), str(refused)
        assert other.sni == [https.name]  # the name was offered; the answer did not match it
        assert other.hosts == []


@contextlib.contextmanager
def _redirecting(to: str, cert_file: Path, key_file: Path) -> Iterator[tuple[int, list[str]]]:
    """An https server on 127.0.0.1 that keeps connections alive and answers /hop with a
    redirect to ``to`` (``{port}`` filled in) and anything else with 200; yields its port and
    the paths it was asked for."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a pooling client could reuse the connection

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            paths.append(self.path)
            hop = self.path == "/hop"
            self.send_response(302 if hop else 200)
            if hop:
                self.send_header("Location", to.format(port=httpd.server_port))
            self.send_header("Content-Length", "0" if hop else "4")
            self.end_headers()
            if not hop:
                self.wfile.write(b"body")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_port, paths
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_a_redirect_to_another_name_on_the_same_address_is_verified_anew(
    https: Https, tmp_path: Path
) -> None:
    # The certificate names only the host; the redirect goes to the same 127.0.0.1:port by its
    # literal address, which it is not valid for. Reusing the first hop's connection (pooled by
    # the pinned address) would skip that check and fetch the body.
    cert, key = https.ca.issue(https.name, https.folder)
    with _redirecting("https://127.0.0.1:{port}/clip.wav", cert, key) as (port, paths):
        url = f"https://{https.name}:{port}/hop"
        refused = await _refusal(url, https.settings(), tmp_path / "x")
        assert refused.code == "source_url_certificate_invalid", refused
        assert paths == ["/hop"]  # the second hop never got a request through

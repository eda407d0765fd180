"""fetch_source_url against a real local HTTP server: what it refuses (private and metadata
hosts, a name resolving to loopback, a redirect to a private address, a body over the cap) and
what it downloads. The server is plain http on 127.0.0.1, which only the test-only setting
source_url_allow_loopback admits."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from polydub.errors import InvalidInput
from polydub.media.source_url import check_source_url, fetch_source_url
from polydub.settings import Settings
from tests.media import make_audio, tone
from tests.source_server import SourceServer, serving

pytestmark = pytest.mark.integration

CAP = 256 * 1024
ENABLED = Settings(
    source_url_enabled=True, source_url_allow_loopback=True, source_url_max_bytes=CAP
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceServer]:
    folder = tmp_path_factory.mktemp("source")
    clip = make_audio(folder / "clip.wav", tone(1.0, 440.0, sample_rate=16000), 16000)
    with serving(clip, big=CAP) as served:
        yield served


async def _refusal(url: str, dest: Path, settings: Settings = ENABLED) -> str:
    with pytest.raises(InvalidInput) as caught:
        await fetch_source_url(url, dest, settings)
    assert not await asyncio.to_thread(dest.exists)  # nothing partial is left behind
    return caught.value.code


async def test_a_good_url_is_downloaded_whole(server: SourceServer, tmp_path: Path) -> None:
    dest = tmp_path / "got"
    fetched = await fetch_source_url(f"{server.url}/to-clip", dest, ENABLED)
    assert dest.read_bytes()[:4] == b"RIFF"
    assert fetched.size == dest.stat().st_size
    assert fetched.filename == "clip.wav" and fetched.content_type == "audio/wav"
    assert fetched.url == f"{server.url}/clip.wav"


async def test_disabled_by_default(server: SourceServer, tmp_path: Path) -> None:
    assert Settings().source_url_enabled is False
    assert Settings().source_url_allow_loopback is False
    before = len(server.hits)
    code = await _refusal(f"{server.url}/clip.wav", tmp_path / "x", Settings())
    assert code == "source_url_disabled"
    assert len(server.hits) == before  # not even a connection


async def test_loopback_needs_the_test_setting(server: SourceServer, tmp_path: Path) -> None:
    strict = Settings(source_url_enabled=True)
    assert await _refusal(f"{server.url}/clip.wav", tmp_path / "x", strict) == (
        "source_url_refused"  # http at all
    )
    # A name (not a literal) resolving to loopback: refused after its one resolution.
    name = socket.gethostname()
    resolved = {i[4][0] for i in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    assert not any(ipaddress.ip_address(str(a)).is_global for a in resolved)
    port = server.url.rsplit(":", 1)[1]
    assert await _refusal(f"https://{name}:{port}/clip.wav", tmp_path / "x", strict) == (
        "source_url_refused"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://10.1.2.3/clip.wav",
        "https://[::1]/clip.wav",
        "https://[::ffff:127.0.0.1]/clip.wav",
        "https://localhost/clip.wav",
        "https://user:pw@example.com/clip.wav",
        "ftp://example.com/clip.wav",
        "file:///etc/passwd",
    ],
)
def test_refused_by_form_even_with_the_test_setting(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_source_url(url, ENABLED)
    assert caught.value.code == "source_url_refused"


def test_a_public_https_url_passes_the_form_check() -> None:
    assert check_source_url("https://example.com/a.mp4", Settings()) == "https://example.com/a.mp4"


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata"])
async def test_a_redirect_to_a_private_address_is_refused(
    server: SourceServer, tmp_path: Path, path: str
) -> None:
    assert await _refusal(f"{server.url}{path}", tmp_path / "x") == "source_url_refused"


async def test_a_redirect_loop_is_cut(server: SourceServer, tmp_path: Path) -> None:
    before = len(server.hits)
    assert await _refusal(f"{server.url}/loop", tmp_path / "x") == "source_url_refused"
    assert len(server.hits) - before == ENABLED.source_url_max_redirects + 1


async def test_over_size_bodies_are_refused(server: SourceServer, tmp_path: Path) -> None:
    assert await _refusal(f"{server.url}/endless", tmp_path / "x") == "source_url_too_large"
    assert await _refusal(f"{server.url}/declared-big", tmp_path / "x") == ("source_url_too_large")


async def test_unreachable_and_missing(server: SourceServer, tmp_path: Path) -> None:
    assert await _refusal(f"{server.url}/nothing", tmp_path / "x") == "source_url_unreachable"
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert await _refusal(f"http://127.0.0.1:{port}/", tmp_path / "x") == ("source_url_unreachable")

"""The address policy of source_url fetches on IPv6 addresses that lead to an IPv4 one: each is
judged as the IPv4 address it reaches, so a private IPv4 cannot be reached through a translator
or tunnel prefix."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from polydub.errors import ConfigurationError, InvalidInput
from polydub.media import source_url
from polydub.media.source_url import check_source_url
from polydub.settings import Settings

# Teredo: server 65.54.227.120, client 10.0.0.1 / 8.8.8.8 (stored inverted in the last 32 bits).
_TEREDO_PRIVATE = "2001:0:4136:e378:8000:63bf:f5ff:fffe"
_TEREDO_PUBLIC = "2001:0:4136:e378:8000:63bf:f7f7:f7f7"


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",  # NAT64, well-known prefix: 10.0.0.1
        "64:ff9b::7f00:1",  # 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # 169.254.169.254 (cloud metadata)
        "64:ff9b:1::a00:1",  # NAT64 local-use prefix (RFC 8215): refused whole
        "64:ff9b:1:808:8:800::",  # 8.8.8.8 at a /48 position, still local-use
        "2002:a00:1::",  # 6to4 of 10.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        _TEREDO_PRIVATE,
    ],
)
def test_an_embedded_private_ipv4_is_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    if not address.startswith("64:ff9b:1:"):
        embedded = source_url._embedded_ipv4(ipaddress.IPv6Address(address))
        assert embedded is not None and not embedded.is_global, embedded
    assert not source_url._is_public(ip)
    with pytest.raises(InvalidInput) as caught:
        check_source_url(f"https://[{address}]/clip.wav", Settings())
    assert caught.value.code == "source_url_refused"


@pytest.mark.parametrize(
    ("address", "reaches"),
    [
        ("::ffff:8.8.8.8", "8.8.8.8"),
        ("64:ff9b::808:808", "8.8.8.8"),
        ("2002:808:808::1", "8.8.8.8"),
        (_TEREDO_PUBLIC, "8.8.8.8"),
    ],
)
def test_an_embedded_public_ipv4_is_admitted(address: str, reaches: str) -> None:
    ip = ipaddress.IPv6Address(address)
    assert source_url._embedded_ipv4(ip) == ipaddress.IPv4Address(reaches)
    assert source_url._is_public(ip)
    url = f"https://[{address}]/clip.wav"
    assert check_source_url(url, Settings()) == url


def test_plain_ipv6_is_judged_as_itself() -> None:
    assert source_url._is_public(ipaddress.ip_address("2606:4700:4700::1111"))
    assert not source_url._is_public(ipaddress.ip_address("fd00::1"))
    assert not source_url._is_public(ipaddress.ip_address("::1"))


async def test_a_missing_or_invalid_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    await asyncio.to_thread(not_pem.write_text, "not a certificate\n")
    for ca_file in (str(tmp_path / "missing.pem"), str(not_pem)):
        settings = Settings(source_url_enabled=True, source_url_ca_file=ca_file)
        dest = tmp_path / "got"
        with pytest.raises(ConfigurationError) as caught:
            await source_url.fetch_source_url("https://media.example.com/a.wav", dest, settings)
        assert caught.value.code == "source_url_ca_file_invalid"
        assert ca_file in str(caught.value)
        assert not await asyncio.to_thread(dest.exists)


async def test_the_tls_context_is_built_once_per_ca_file() -> None:
    first = await source_url.tls_context(None)
    assert await source_url.tls_context(None) is first
    assert first.verify_mode.name == "CERT_REQUIRED" and first.check_hostname

"""The download links' tokens and Range parsing (api/routes/downloads.py), without servers; the
route itself is tested against the real stack in tests/integration/api/test_downloads.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from polydub.api.routes.downloads import (
    ByteRange,
    DownloadLink,
    Forbidden,
    _Unsatisfiable,
    parse_range,
    sign,
    verify,
)
from polydub.settings import Settings

pytestmark = pytest.mark.unit

SETTINGS = Settings(s3_secret_key="unit-secret")
LINK = DownloadLink(uuid.uuid4(), "jobs/x/outputs/spa/dubbed_video", "talk.spa.mp4", 2_000)


def test_a_token_round_trips_until_it_expires() -> None:
    token = sign(SETTINGS, LINK)
    assert verify(SETTINGS, token, now=1_999) == LINK
    with pytest.raises(Forbidden) as expired:
        verify(SETTINGS, token, now=2_001)
    assert expired.value.code == "download_link_expired"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # another signature
        lambda t: "e" + t,  # another payload
        lambda t: t.replace(".", ""),  # no signature
        lambda t: "",
        lambda t: "a.b.c",
        lambda t: "%%%.%%%",
    ],
)
def test_anything_but_our_signature_is_refused(mangle: Callable[[str], str]) -> None:
    token = mangle(sign(SETTINGS, LINK))
    with pytest.raises(Forbidden) as refused:
        verify(SETTINGS, token, now=0)
    assert refused.value.code == "invalid_download_link"


def test_another_deployments_key_is_refused() -> None:
    token = sign(Settings(s3_secret_key="other"), LINK)
    with pytest.raises(Forbidden):
        verify(SETTINGS, token, now=0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=10-", ByteRange(10, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-500", ByteRange(0, 99)),  # more than the file: all of it
        ("bytes=90-500", ByteRange(90, 99)),
        ("BYTES = 5-5", ByteRange(5, 5)),
        ("bytes=9-0", None),  # invalid: ignored
        ("bytes=0-1,3-4", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=a-b", None),
        ("bytes=-", None),
    ],
)
def test_ranges(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(_Unsatisfiable):
        parse_range(header, 100)
    assert parse_range(header, 0) is None  # an empty file: always whole

"""Preview clips: a time range of a dubbed output, cut by stream copy and cached in S3.

The API never encodes (the 'burns the API's CPU' finding of issue #13): a clip is a stream copy
(``polydub.media.preview.cut_args``, which refuses any encoder or filter) of an MP4 source: the
dubbed video when it is MP4, else the preview rendition the worker made (a VP8 video, say), else
the dubbed audio. A failed copy is an error, never a re-encode. Ranges snap outward to the grid
(``preview_grid_seconds``), so nearby ranges are one clip; the key is deterministic
(``jobs/<job>/previews/<lang>/<start_ms>-<end_ms>.<ext>``): a second request is a presign and no
work. Cuts at once are bounded per API key in each replica (``api_preview_concurrency_per_key``):
beyond it, 429 ``preview_busy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from polydub.api.errors import TooManyRequests
from polydub.errors import InternalError, InvalidInput, ServiceUnavailable
from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys
from polydub.media.preview import cut_args
from polydub.media.runner import run_ffmpeg
from polydub.settings import Settings


@dataclass(frozen=True)
class Clip:
    key: str
    content_type: str
    size_bytes: int


@dataclass
class PreviewSlots:
    """Cuts running now, per API key, in this process."""

    busy: dict[uuid.UUID, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def hold(self, owner: uuid.UUID, limit: int) -> Iterator[None]:
        if self.busy.get(owner, 0) >= limit:
            raise TooManyRequests(
                f"{limit} previews of this key are being cut; ask again when one is done",
                code="preview_busy",
                retry_after=1,
            )
        self.busy[owner] = self.busy.get(owner, 0) + 1
        try:
            yield
        finally:
            self.busy[owner] -= 1
            if not self.busy[owner]:
                del self.busy[owner]


SLOTS = PreviewSlots()


async def _ffmpeg(args: list[str], limit_seconds: float) -> tuple[int, str]:
    """ffmpeg through polydub.media's runner (its binary, file-only protocols, timeout), in a
    thread; (0, "") or (1, why). A missing binary is a ConfigurationError and propagates."""
    try:
        await asyncio.to_thread(
            run_ffmpeg, args, timeout=limit_seconds, blame="internal", what="preview"
        )
    except (InternalError, ServiceUnavailable) as exc:  # failed, timed out or killed
        return 1, exc.message
    return 0, ""


async def make_preview(
    store: ObjectStore,
    settings: Settings,
    *,
    owner: uuid.UUID,
    job_id: uuid.UUID,
    language: str,
    source_key: str,
    is_video: bool,
    start: float,
    end: float,
) -> Clip:
    """The clip of [start, end] (already on the grid), cut unless it is cached."""
    ext, content_type = ("mp4", "video/mp4") if is_video else ("m4a", "audio/mp4")
    key = JobKeys(job_id).preview(language, start, end, ext)
    if await store.exists(key):
        info = await store.stat(key)
        return Clip(key, content_type, info.size)
    with SLOTS.hold(owner, settings.api_preview_concurrency_per_key):
        work = Path(tempfile.mkdtemp(prefix="polydub-preview-", dir=settings.api_tmp_dir))
        try:
            src = await store.download(source_key, work / "source")
            out = work / f"clip.{ext}"
            code, err = await _ffmpeg(cut_args(src, out, start, end, video=is_video), 120)
            if code != 0 or not out.exists() or out.stat().st_size < 64:
                if start > 0:
                    raise InvalidInput(
                        "the preview range is outside the output", code="preview_out_of_range"
                    )
                raise ServiceUnavailable(f"could not cut the preview: {err[-300:]}", code="ffmpeg")
            stored = await store.put_file(key, out, content_type=content_type)
            return Clip(key, content_type, stored.size)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

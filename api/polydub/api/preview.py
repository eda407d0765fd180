"""Preview clips: a time range of a dubbed output, cut with ffmpeg and cached in S3.

The clip is cut by stream copy (no re-encode: fast, and the video stays bit-identical; the cut
snaps to the keyframe at or before the start), and re-encoded only if the copy fails. Its key is
deterministic (``jobs/<job>/previews/<lang>/<start_ms>-<end_ms>.<ext>``), so a second request
for the same range is a presign and no work.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from polydub.errors import InternalError, InvalidInput, ServiceUnavailable
from polydub.infra.storage import ObjectStore
from polydub.jobs import JobKeys
from polydub.media.runner import file_input, run_ffmpeg
from polydub.settings import Settings


@dataclass(frozen=True)
class Clip:
    key: str
    content_type: str
    size_bytes: int


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
    job_id: uuid.UUID,
    language: str,
    source_key: str,
    is_video: bool,
    start: float,
    end: float,
) -> Clip:
    ext, content_type = ("mp4", "video/mp4") if is_video else ("m4a", "audio/mp4")
    key = JobKeys(job_id).preview(language, start, end, ext)
    if await store.exists(key):
        info = await store.stat(key)
        return Clip(key, content_type, info.size)
    work = Path(tempfile.mkdtemp(prefix="polydub-preview-", dir=settings.api_tmp_dir))
    try:
        src = await store.download(source_key, work / "source")
        out = work / f"clip.{ext}"
        cut = [*file_input(src, options=["-ss", f"{start:.3f}"]), "-t", f"{end - start:.3f}"]
        tail = ["-movflags", "+faststart", "-f", "mp4", "-y", f"file:{out}"]
        streams = ["-map", "0:v:0?", "-map", "0:a:0?"] if is_video else ["-map", "0:a:0"]
        code, err = await _ffmpeg(
            [*cut, *streams, "-c", "copy", "-avoid_negative_ts", "make_zero", *tail], 120
        )
        if code != 0 or not out.exists() or out.stat().st_size == 0:
            codecs = ["-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac"]
            code, err = await _ffmpeg([*cut, *streams, *codecs, *tail], 300)
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

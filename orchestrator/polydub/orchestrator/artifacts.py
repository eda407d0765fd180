"""Stage inputs and outputs in S3, with a local cache for the duration of one job attempt.

Stages read what earlier stages wrote through its object key (a redelivered job may run on
another worker, so nothing is passed in memory), but within one attempt each object is fetched
at most once.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import InvalidInput, PolydubError
from polydub.infra.storage import ObjectStore, sha256_file
from polydub.media.pcm import read_wav, write_wav


class Artifacts:
    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir

    def local(self, key: str) -> Path:
        path = self.cache_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    async def fetch(self, key: str, *, etag: str | None = None) -> Path:
        """The object as a local file (downloaded once per attempt); with ``etag``, only that
        version of it (else Conflict ``object_changed``)."""
        path = self.local(key)
        if not path.exists():  # a stat of a local file: not worth a thread
            partial = path.with_name(path.name + ".part")
            await self.store.download(key, partial, etag=etag)
            partial.rename(path)
        return path

    async def fetch_input(self, key: str, etag: str | None) -> Path:
        """The job's input, only if it is still the object the API validated (``etag``; None
        for a job from before inputs were pinned). A resumed attempt skips validate, so this
        check on every read is what keeps it from processing other bytes."""
        try:
            return await self.fetch(key, etag=etag)
        except PolydubError as exc:
            if exc.code != "object_changed":
                raise
            raise InvalidInput(
                "the job's input changed after it was validated; submit it again",
                code="input_changed",
            ) from exc

    async def put_file(self, key: str, path: Path, content_type: str) -> dict[str, Any]:
        """Upload a file and keep it as the cached copy; returns what an artifact row needs."""
        stored = await self.store.put_file(key, path, content_type)
        digest = await asyncio.to_thread(self._keep, key, path)
        return {"key": key, "size": stored.size, "sha256": digest, "content_type": content_type}

    def _keep(self, key: str, path: Path) -> str:
        cached = self.local(key)
        if cached.resolve() != path.resolve():
            shutil.copyfile(path, cached)
        return sha256_file(path)

    async def put_json(self, key: str, data: Any) -> str:
        body = json.dumps(data, ensure_ascii=False, indent=1, default=_default).encode()
        self.local(key).write_bytes(body)
        await self.store.put_bytes(key, body, "application/json")
        return key

    async def get_json(self, key: str) -> Any:
        return json.loads((await self.fetch(key)).read_bytes())

    async def put_wav(self, key: str, samples: NDArray[Any], sample_rate: int) -> str:
        path = self.local(key)
        write_wav(path, samples, sample_rate)
        await self.store.put_file(key, path, "audio/wav")
        return key

    async def get_wav(self, key: str) -> tuple[NDArray[np.float32], int]:
        """Samples (frames,) for mono, (frames, channels) otherwise, and the sample rate."""
        samples, rate = read_wav(await self.fetch(key))
        data = np.asarray(samples, dtype=np.float32)
        return (data[:, 0] if data.shape[1] == 1 else data), rate


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

"""A file the python models serve as it is, read again only when it changes."""

from __future__ import annotations

import os
from pathlib import Path


class CachedFile:
    """The bytes of ``path``, re-read when its modification time changes; None while absent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cached: tuple[float, bytes] | None = None

    def read(self) -> bytes | None:
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, self.path.read_bytes())
        return self._cached[1]

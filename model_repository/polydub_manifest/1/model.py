"""Serves ``manifest.json`` beside this file (see ``polydub.manifest``), re-read when it changes."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.path = os.path.join(args["model_repository"], args["model_version"], "manifest.json")
        self.cached: tuple[float, bytes] = (-1.0, b"{}")

    def execute(self, requests: list[Any]) -> list[Any]:
        body = self._read()
        out = pb_utils.Tensor("manifest", np.array([body], dtype=np.object_))
        return [pb_utils.InferenceResponse(output_tensors=[out]) for _ in requests]

    def _read(self) -> bytes:
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return b"{}"
        if mtime != self.cached[0]:
            with open(self.path, "rb") as handle:
                self.cached = (mtime, handle.read())
        return self.cached[1]

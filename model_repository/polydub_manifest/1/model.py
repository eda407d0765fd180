"""Serves ``manifest.json`` beside this file (see ``polydub.manifest``), re-read when it changes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from polydub.serving.files import CachedFile
from polydub.serving.names import ManifestOut

if TYPE_CHECKING:
    from polydub.serving import triton_utils as pb_utils
else:
    import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.manifest = CachedFile(version_dir / "manifest.json")

    def execute(
        self, requests: list[pb_utils.InferenceRequest]
    ) -> list[pb_utils.InferenceResponse]:
        body = self.manifest.read() or b"{}"
        out = pb_utils.Tensor(ManifestOut.MANIFEST, np.array([body], dtype=np.object_))
        return [pb_utils.InferenceResponse(output_tensors=[out]) for _ in requests]

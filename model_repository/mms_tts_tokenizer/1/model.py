"""Serves the MMS-TTS tokenizer specs so that a client which only talks to Triton can tokenise.

Reads ``<this version>/tokenizers/<iso3>.json`` (written by ``export/mms_tts.py``) on request and
keeps it until the file changes, so a newly exported voice is served without a reload. Only its
own folder is read, which keeps it working from a cloud model repository too.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

_CODE = re.compile(r"^[a-z]{3}$")  # ISO 639-3; also keeps paths inside the folder


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.folder = os.path.join(args["model_repository"], args["model_version"], "tokenizers")
        self.cache: dict[str, tuple[float, bytes]] = {}

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "language").as_numpy()
                value = raw.reshape(-1)[0]
                code = value.decode("utf-8") if isinstance(value, bytes) else str(value)
                body = self._spec(code.strip()) if code.strip() else self._languages()
                out = pb_utils.Tensor("tokenizer", np.array([body], dtype=np.object_))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # one bad request never fails its batch mates
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def _languages(self) -> bytes:
        names = os.listdir(self.folder) if os.path.isdir(self.folder) else []
        codes = sorted(n[:-5] for n in names if n.endswith(".json") and _CODE.match(n[:-5]))
        return json.dumps({"languages": codes}).encode("utf-8")

    def _spec(self, code: str) -> bytes:
        if not _CODE.match(code):
            raise ValueError(f"not an ISO 639-3 code: {code!r}")
        path = os.path.join(self.folder, f"{code}.json")
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            raise ValueError(f"no MMS-TTS tokenizer for language '{code}'") from None
        cached = self.cache.get(code)
        if cached is None or cached[0] != mtime:
            with open(path, "rb") as handle:
                cached = (mtime, handle.read())
            self.cache[code] = cached
        return cached[1]

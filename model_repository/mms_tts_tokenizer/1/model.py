"""Serves the MMS-TTS tokenizer specs so that a client which only talks to Triton can tokenise:
a language's ``TtsTokenizer`` spec, or for an empty code the languages with one
(``polydub.serving.tts_tokenizer.SpecFolder``: ``<this version>/tokenizers/<iso3>.json``, written
by the export, read again when it changes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from polydub.serving.batch import strings
from polydub.serving.names import TtsTokenizerIn, TtsTokenizerOut
from polydub.serving.tts_tokenizer import SPEC_FOLDER, SpecFolder

if TYPE_CHECKING:
    from polydub.serving import triton_utils as pb_utils
else:
    import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.specs = SpecFolder(version_dir / SPEC_FOLDER)

    def execute(
        self, requests: list[pb_utils.InferenceRequest]
    ) -> list[pb_utils.InferenceResponse]:
        return [self._respond(request) for request in requests]

    def _respond(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        try:  # one bad request never fails its batch mates
            tensor = pb_utils.get_input_tensor_by_name(request, TtsTokenizerIn.LANGUAGE)
            if tensor is None:
                raise ValueError(f"no '{TtsTokenizerIn.LANGUAGE}' input")
            body = self.specs.respond(strings(tensor.as_numpy())[0])
        except Exception as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        out = pb_utils.Tensor(TtsTokenizerOut.TOKENIZER, np.array([body], dtype=np.object_))
        return pb_utils.InferenceResponse(output_tensors=[out])

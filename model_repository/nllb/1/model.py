"""NLLB-200 translation as a Triton python model: Triton's tensors in and out, the work in
``polydub.serving.nllb_service`` (tokenisation, one ``nllb_encoder`` call per batch, the batched
beam search with one ``nllb_decoder`` call per step, made here as BLS requests). Inputs, outputs
and parameters are described there; the names are ``polydub.serving.names.NllbIn`` / ``NllbOut``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from polydub.serving.batch import Failure, Inputs, MissingExport, Outcome, parameters
from polydub.serving.names import NllbIn
from polydub.serving.nllb_service import PARAMETERS, NllbService

if TYPE_CHECKING:
    from polydub.serving import triton_utils as pb_utils
else:
    import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config: dict[str, Any] = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        try:
            self.service = NllbService(version_dir, parameters(config, PARAMETERS), _infer)
        except MissingExport as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc

    def execute(
        self, requests: list[pb_utils.InferenceRequest]
    ) -> list[pb_utils.InferenceResponse]:
        outcomes = self.service.run([_inputs(request) for request in requests])
        return [_response(outcome) for outcome in outcomes]


def _infer(
    model: str, feeds: Mapping[str, NDArray[Any]], outputs: Sequence[str]
) -> list[NDArray[Any]]:
    """One BLS call of a graph model."""
    request = pb_utils.InferenceRequest(
        model_name=model,
        requested_output_names=list(outputs),
        inputs=[pb_utils.Tensor(name, value) for name, value in feeds.items()],
    )
    response = request.exec()
    if response.has_error():
        raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
    arrays = []
    for name in outputs:
        tensor = pb_utils.get_output_tensor_by_name(response, name)
        if tensor is None:
            raise pb_utils.TritonModelException(f"{model}: no output {name!r}")
        # A copy: the response's shared memory goes away with the response.
        arrays.append(np.array(tensor.as_numpy()))
    return arrays


def _inputs(request: pb_utils.InferenceRequest) -> Inputs:
    tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in NllbIn}
    return {name: tensor.as_numpy() for name, tensor in tensors.items() if tensor is not None}


def _response(outcome: Outcome) -> pb_utils.InferenceResponse:
    if isinstance(outcome, Failure):
        error = (
            pb_utils.TritonError(outcome.message, pb_utils.TritonError.INVALID_ARG)
            if outcome.invalid
            else pb_utils.TritonError(outcome.message)
        )
        return pb_utils.InferenceResponse(error=error)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, array) for name, array in outcome.items()]
    )

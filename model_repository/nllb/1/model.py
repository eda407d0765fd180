"""NLLB-200 translation as a Triton python model: Triton's tensors in and out, the work in
``polydub.serving.nllb_service`` (tokenisation, then the batch shared out among beam searches run
at once, each with one encoder run and one decoder run per step for all its beams, both graphs
in this instance's own onnxruntime sessions). Inputs,
outputs and parameters are described there; the names are ``polydub.serving.names.NllbIn`` /
``NllbOut``. A request Triton reports cancelled (its client went away) stops being decoded at
the next step and is answered CANCELLED.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
        device_id = int(args.get("model_instance_device_id") or 0)
        try:
            self.service = NllbService(version_dir, parameters(config, PARAMETERS), device_id)
        except MissingExport as exc:
            raise pb_utils.TritonModelException(str(exc)) from exc
        pb_utils.Logger.log_info(
            f"nllb: onnxruntime providers {self.service.graphs.providers}, "
            f"{len(self.service.translator.models)} searches at once, "
            f"{self.service.graphs.threads} intra-op threads per session"
        )

    def execute(
        self, requests: list[pb_utils.InferenceRequest]
    ) -> list[pb_utils.InferenceResponse]:
        outcomes = self.service.run(
            [_inputs(request) for request in requests],
            [request.is_cancelled for request in requests],
        )
        return [_response(outcome) for outcome in outcomes]


def _inputs(request: pb_utils.InferenceRequest) -> Inputs:
    tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in NllbIn}
    return {name: tensor.as_numpy() for name, tensor in tensors.items() if tensor is not None}


def _response(outcome: Outcome) -> pb_utils.InferenceResponse:
    if isinstance(outcome, Failure):
        if outcome.invalid:
            error = pb_utils.TritonError(outcome.message, pb_utils.TritonError.INVALID_ARG)
        elif outcome.cancelled:
            error = pb_utils.TritonError(outcome.message, pb_utils.TritonError.CANCELLED)
        else:
            error = pb_utils.TritonError(outcome.message)
        return pb_utils.InferenceResponse(error=error)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, array) for name, array in outcome.items()]
    )

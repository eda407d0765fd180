"""A python-based Triton backend named ``onnxruntime``: standard ONNX configs on a CPU-only Triton.

Triton runs ``<backend-dir>/onnxruntime/model.py`` through the python backend when
``libtriton_onnxruntime.so`` is absent, so a model with ``platform: "onnxruntime_onnx"`` (or
``backend: "onnxruntime"``) and ``<version>/model.onnx`` loads here unchanged.

Behaviour, where it differs from or extends the official backend:

* Batching: all requests of one dynamic batch run as ONE ``InferenceSession.run``; they are
  concatenated along the batch axis. Triton's batcher only groups requests of equal shapes
  unless an input has ``allow_ragged_batch: true``; for such inputs this backend pads every
  axis to the batch's longest, with 0 or ``parameters { key: "pad_value.<input>" ... }``
  (the official backend does not pad ragged inputs).
* Outputs come back per request at the padded length, unless
  ``parameters { key: "unpad.<output>" value { string_value: "<input>:<axis>[:<out_axis>]" } }``
  says: cut the output's axis ``out_axis`` (default ``axis``) to that request's own length of
  ``<input>`` along ``axis``. Axes count after the batch axis, as in ``dims``.
  Only right for outputs aligned position-by-position with that input.
* ``max_batch_size: 0``: every request runs on its own; no padding, no batching. Unlike the
  official backend, autocomplete never raises ``max_batch_size`` by itself.
* Autocomplete fills missing inputs/outputs (name, data_type, dims) from the ONNX graph; when
  every configured tensor already has a data_type and dims it does not open the model at all.
* Parameters honoured: ``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode``,
  ``enable_mem_arena``, ``enable_mem_pattern`` and ``optimization { graph { level } }``.
  ``execution_accelerators`` are logged and ignored: this backend runs the CPU provider only.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

Array = npt.NDArray[Any]

# ONNX element types (as onnxruntime names them) <-> Triton config types <-> numpy.
ONNX_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int8)": "TYPE_INT8",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}
TRITON_TO_NUMPY: dict[str, Any] = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_FP64": np.float64,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_INT16": np.int16,
    "TYPE_INT8": np.int8,
    "TYPE_UINT64": np.uint64,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT8": np.uint8,
    "TYPE_BOOL": np.bool_,
    "TYPE_STRING": np.object_,  # BYTES on the wire
}
# optimization.graph.level as the official backend reads it (0 / unset: everything).
GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


class RequestError(Exception):
    """Something wrong with one request: it gets an error response, its batch mates do not."""


def _params(config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def _model_file(version_dir: str, config: dict[str, Any]) -> str:
    path = os.path.join(version_dir, config.get("default_model_filename") or "model.onnx")
    if not os.path.isfile(path):
        raise pb_utils.TritonModelException(f"no ONNX model at {path}")
    return path


def _dims(shape: list[Any], batched: bool) -> list[int]:
    # Symbolic ("batch", "n") and unknown (None) dims are variable in Triton: -1.
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    return dims[1:] if batched else dims


def _needs_autocomplete(config: dict[str, Any]) -> bool:
    tensors = list(config.get("input") or []) + list(config.get("output") or [])
    return (
        not config.get("input")
        or not config.get("output")
        or any(
            t.get("data_type", "TYPE_INVALID") == "TYPE_INVALID" or not t.get("dims")
            for t in tensors
        )
    )


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        config = auto_complete_model_config.as_dict()
        if not _needs_autocomplete(config):
            return auto_complete_model_config  # skip opening a possibly large model twice
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(
            _model_file(pb_utils.get_model_dir(), config),
            options,
            providers=["CPUExecutionProvider"],
        )
        batched = config.get("max_batch_size", 0) > 0
        for arg in session.get_inputs():
            auto_complete_model_config.add_input(
                {
                    "name": arg.name,
                    "data_type": ONNX_TO_TRITON[arg.type],
                    "dims": _dims(arg.shape, batched),
                }
            )
        for arg in session.get_outputs():
            auto_complete_model_config.add_output(
                {
                    "name": arg.name,
                    "data_type": ONNX_TO_TRITON[arg.type],
                    "dims": _dims(arg.shape, batched),
                }
            )
        return auto_complete_model_config

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = _params(config)
        self.max_batch_size: int = config.get("max_batch_size", 0)
        self.input_types = {t["name"]: t["data_type"] for t in config["input"]}
        self.output_types = {t["name"]: t["data_type"] for t in config["output"]}
        self.pad_values = {
            name: self._pad_value(params[f"pad_value.{name}"], dtype)
            for name, dtype in self.input_types.items()
            if f"pad_value.{name}" in params
        }
        self.unpad = {
            name: self._unpad_rule(params[f"unpad.{name}"])
            for name in self.output_types
            if f"unpad.{name}" in params
        }

        accelerators = config.get("optimization", {}).get("execution_accelerators", {})
        for kind in ("gpu_execution_accelerator", "cpu_execution_accelerator"):
            for acc in accelerators.get(kind) or []:
                pb_utils.Logger.log_warn(
                    f"{args['model_name']}: ignoring {kind} '{acc.get('name')}' "
                    "(CPU-only onnxruntime backend)"
                )

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", 0))
        options.inter_op_num_threads = int(params.get("inter_op_thread_count", 0))
        if params.get("execution_mode") == "1":
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.enable_cpu_mem_arena = params.get("enable_mem_arena", "1") != "0"
        options.enable_mem_pattern = params.get("enable_mem_pattern", "1") != "0"
        level = int(config.get("optimization", {}).get("graph", {}).get("level", 0))
        options.graph_optimization_level = GRAPH_LEVELS.get(
            level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(
            _model_file(version_dir, config), options, providers=["CPUExecutionProvider"]
        )
        self._check_against_model()

    @staticmethod
    def _pad_value(text: str, triton_type: str) -> Any:
        if triton_type == "TYPE_STRING":
            return text
        if triton_type == "TYPE_BOOL":
            return text.strip().lower() in ("1", "true", "yes")
        return np.array(float(text)).astype(TRITON_TO_NUMPY[triton_type]).item()

    def _unpad_rule(self, text: str) -> tuple[str, int, int]:
        parts = text.split(":")
        if len(parts) not in (2, 3) or parts[0] not in self.input_types:
            raise pb_utils.TritonModelException(
                f"unpad rule '{text}': expected '<input>:<axis>[:<output_axis>]'"
            )
        axis = int(parts[1])
        return parts[0], axis, int(parts[2]) if len(parts) == 3 else axis

    def _check_against_model(self) -> None:
        """Fail at load, not at the first request, when config and graph disagree."""
        model_in = {a.name: a for a in self.session.get_inputs()}
        model_out = {a.name: a for a in self.session.get_outputs()}
        for kind, declared, actual in (
            ("input", self.input_types, model_in),
            ("output", self.output_types, model_out),
        ):
            for name, dtype in declared.items():
                if name not in actual:
                    raise pb_utils.TritonModelException(
                        f"{kind} '{name}' is not in the ONNX model (has {sorted(actual)})"
                    )
                if ONNX_TO_TRITON.get(actual[name].type) != dtype:
                    raise pb_utils.TritonModelException(
                        f"{kind} '{name}': config says {dtype}, model has {actual[name].type}"
                    )
        missing = [n for n in model_in if n not in self.input_types]
        if missing:
            raise pb_utils.TritonModelException(f"model inputs missing from config: {missing}")

    # ------------------------------------------------------------------ execution

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        # Requests that send different sets of (optional) inputs cannot share one run.
        groups: dict[tuple[str, ...], list[tuple[int, dict[str, Array]]]] = defaultdict(list)
        for i, request in enumerate(requests):
            try:
                feeds = self._read_inputs(request)
            except Exception as exc:  # e.g. RequestError, undecodable BYTES
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            if self.max_batch_size == 0:
                groups[(f"#{i}",)].append((i, feeds))  # no batching: a group of one
            else:
                groups[tuple(sorted(feeds))].append((i, feeds))

        for members in groups.values():
            try:
                outputs = self._run([feeds for _, feeds in members])
                for (i, _), tensors in zip(members, outputs, strict=True):
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(n, a) for n, a in tensors.items()]
                    )
            except Exception as exc:  # one failed run fails its own requests, never the stub
                error = pb_utils.TritonError(f"onnxruntime: {type(exc).__name__}: {exc}")
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(error=error)
        return responses

    def _read_inputs(self, request: Any) -> dict[str, Array]:
        feeds: dict[str, Array] = {}
        for name, triton_type in self.input_types.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                continue  # Triton already rejected missing non-optional inputs
            array = tensor.as_numpy()
            if triton_type == "TYPE_STRING":  # onnxruntime wants str, Triton hands over bytes
                array = np.vectorize(
                    lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v),
                    otypes=[np.object_],
                )(array)
            elif array.dtype != TRITON_TO_NUMPY[triton_type]:
                raise RequestError(f"input '{name}': expected {triton_type}, got {array.dtype}")
            if self.max_batch_size > 0 and array.ndim == 0:
                raise RequestError(f"input '{name}': missing the batch dimension")
            feeds[name] = array
        return feeds

    def _run(self, batch: list[dict[str, Array]]) -> list[dict[str, Array]]:
        """One session.run for the whole batch; returns each request's outputs."""
        output_names = list(self.output_types)
        if len(batch) == 1:
            results = self.session.run(output_names, batch[0])
            return [
                {n: np.ascontiguousarray(r) for n, r in zip(output_names, results, strict=True)}
            ]
        rows = [next(iter(feeds.values())).shape[0] for feeds in batch]
        merged = {name: self._concat([feeds[name] for feeds in batch], name) for name in batch[0]}
        results = dict(zip(output_names, self.session.run(output_names, merged), strict=True))

        per_request: list[dict[str, Array]] = []
        start = 0
        for feeds, n in zip(batch, rows, strict=True):
            tensors = {}
            for name, full in results.items():
                part = full[start : start + n]
                rule = self.unpad.get(name)
                if rule is not None and rule[0] in feeds:
                    source, axis, out_axis = rule
                    index = [slice(None)] * part.ndim
                    index[out_axis + 1] = slice(0, feeds[source].shape[axis + 1])
                    part = part[tuple(index)]
                tensors[name] = np.ascontiguousarray(part)
            per_request.append(tensors)
            start += n
        return per_request

    def _concat(self, arrays: list[Array], name: str) -> Array:
        """Concatenate along the batch axis, padding every other axis to the longest."""
        if any(a.ndim != arrays[0].ndim for a in arrays):
            raise ValueError(f"input '{name}': requests disagree on its rank")
        longest = np.max([a.shape[1:] for a in arrays], axis=0)
        if all(tuple(a.shape[1:]) == tuple(longest) for a in arrays):
            return np.concatenate(arrays, axis=0)
        default = "" if arrays[0].dtype == np.object_ else 0
        fill = self.pad_values.get(name, default)
        out = np.full((sum(a.shape[0] for a in arrays), *longest), fill, dtype=arrays[0].dtype)
        start = 0
        for a in arrays:
            out[(slice(start, start + a.shape[0]), *(slice(0, d) for d in a.shape[1:]))] = a
            start += a.shape[0]
        return out

    def finalize(self) -> None:
        del self.session  # release the graph's memory before the stub exits

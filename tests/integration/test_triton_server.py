"""The real tritonserver from the pytriton wheel serving standard ONNX configs through our backend.

A tiny ONNX graph is built here with the onnx helper API (y = x * 2 + 1 over a ragged float
input, ids_out = ids + 1 over a ragged int64 input), put in a model repository with ordinary
``platform: "onnxruntime_onnx"`` configs, and served by a tritonserver started with
``triton_command`` on free ports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from polydub.stack.triton import (
    cleanup_shm,
    health_url,
    prepare_backend_dir,
    shm_region_prefix,
    triton_command,
)

pytestmark = pytest.mark.integration

BATCHED = "addmul"  # max_batch_size 64, dynamic batching, ragged inputs padded by the backend
UNBATCHED = "addmul_nobatch"  # max_batch_size 0, config is the platform line alone
PAIR = "add_pair"  # a + b: a request with mismatched shapes passes Triton, fails onnxruntime
STARTUP_TIMEOUT_S = 60.0

# Inputs are declared only to mark them ragged; data types, dims and the outputs come from
# autocomplete. ``unpad.y`` cuts y back to each request's own length; ids_out stays padded.
BATCHED_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  { name: "x" allow_ragged_batch: true },
  { name: "ids" allow_ragged_batch: true }
]
dynamic_batching { max_queue_delay_microseconds: 20000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "pad_value.ids" value { string_value: "-1" } }
parameters { key: "unpad.y" value { string_value: "x:0" } }
"""
UNBATCHED_CONFIG = """
platform: "onnxruntime_onnx"
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
# A config written for a GPU server: the TensorRT accelerator is logged and ignored here.
PAIR_CONFIG = """
backend: "onnxruntime"
max_batch_size: 8
instance_group [ { kind: KIND_CPU count: 1 } ]
optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_model(version_dir: Path, batched: bool) -> None:
    """y = x * 2 + 1 (float32), ids_out = ids + 1 (int64); every axis symbolic."""
    lead = ["batch"] if batched else []
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["twice"]),
            helper.make_node("Add", ["twice", "one"], ["y"]),
            helper.make_node("Add", ["ids", "one_i"], ["ids_out"]),
        ],
        "addmul",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, "n"]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [*lead, "m"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, "n"]),
            helper.make_tensor_value_info("ids_out", TensorProto.INT64, [*lead, "m"]),
        ],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("one_i", TensorProto.INT64, [], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "model.onnx"))


def _write_pair_model(version_dir: Path) -> None:
    """c = a + b over [batch, n] float32."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "add_pair",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "n"]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "model.onnx"))


@dataclass(frozen=True)
class TritonServer:
    grpc_url: str
    http_port: int
    log: Path
    startup_s: float

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(health_url(http_port), timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("triton")
    repository = root / "model_repository"
    for name, config, batched in (
        (BATCHED, BATCHED_CONFIG, True),
        (UNBATCHED, UNBATCHED_CONFIG, False),
    ):
        _write_model(repository / name / "1", batched)
        (repository / name / "config.pbtxt").write_text(config)
    _write_pair_model(repository / PAIR / "1")
    (repository / PAIR / "config.pbtxt").write_text(PAIR_CONFIG)

    http_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
    argv, env = triton_command(
        model_repository=repository,
        backend_dir=prepare_backend_dir(root / "stack"),
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        load_models=[BATCHED, UNBATCHED, PAIR],
    )
    log = root / "triton.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the python stubs go down with it
        )
    server = TritonServer(f"127.0.0.1:{grpc_port}", http_port, log, 0.0)
    try:
        while not _ready(http_port):
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited with {proc.returncode}:\n{server.log_tail()}")
            if time.monotonic() - started > STARTUP_TIMEOUT_S:
                pytest.fail(f"tritonserver not ready in {STARTUP_TIMEOUT_S}s:\n{server.log_tail()}")
            time.sleep(0.1)
        server = TritonServer(server.grpc_url, http_port, log, time.monotonic() - started)
        print(f"tritonserver ready in {server.startup_s:.2f}s")
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # the stubs notice their parent is gone and exit
        alive = _group_alive(proc.pid)
        if alive:
            os.killpg(proc.pid, signal.SIGKILL)
        leaked = cleanup_shm(http_port)
        assert not alive, "tritonserver's process group outlived SIGTERM"
        assert leaked == 0, f"{leaked} shared-memory regions {shm_region_prefix(http_port)}* left"


def _inputs(x: npt.NDArray[Any], ids: npt.NDArray[Any]) -> list[InferInput]:
    inputs = [InferInput("x", list(x.shape), "FP32"), InferInput("ids", list(ids.shape), "INT64")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(ids)
    return inputs


async def test_one_request_exact_values(triton_server: TritonServer) -> None:
    client = InferenceServerClient(triton_server.grpc_url)
    try:
        x = np.array([[0.0, 1.0, 2.5, -3.0]], dtype=np.float32)
        ids = np.array([[5, 6, 7]], dtype=np.int64)
        result = await client.infer(BATCHED, _inputs(x, ids))
        np.testing.assert_array_equal(
            result.as_numpy("y"), np.array([[1.0, 3.0, 6.0, -5.0]], dtype=np.float32)
        )
        np.testing.assert_array_equal(result.as_numpy("ids_out"), np.array([[6, 7, 8]]))
        assert result.as_numpy("y").dtype == np.float32
        assert result.as_numpy("ids_out").dtype == np.int64

        # The same graph with max_batch_size 0: no batch axis, run alone.
        single = await client.infer(UNBATCHED, _inputs(x[0], ids[0]))
        np.testing.assert_array_equal(single.as_numpy("y"), np.array([1.0, 3.0, 6.0, -5.0]))
        np.testing.assert_array_equal(single.as_numpy("ids_out"), np.array([6, 7, 8]))
    finally:
        await client.close()


async def test_autocomplete_filled_the_config(triton_server: TritonServer) -> None:
    client = InferenceServerClient(triton_server.grpc_url)
    try:
        batched = (await client.get_model_config(BATCHED, as_json=True))["config"]
        assert {i["name"]: (i["data_type"], i["dims"]) for i in batched["input"]} == {
            "x": ("TYPE_FP32", ["-1"]),
            "ids": ("TYPE_INT64", ["-1"]),
        }
        assert {o["name"]: o["data_type"] for o in batched["output"]} == {
            "y": "TYPE_FP32",
            "ids_out": "TYPE_INT64",
        }
        unbatched = (await client.get_model_config(UNBATCHED, as_json=True))["config"]
        assert unbatched.get("max_batch_size", 0) == 0
        assert {i["name"]: i["dims"] for i in unbatched["input"]} == {
            "x": ["-1"],
            "ids": ["-1"],
        }
    finally:
        await client.close()


async def test_concurrent_ragged_requests_are_batched(triton_server: TritonServer) -> None:
    client = InferenceServerClient(triton_server.grpc_url)
    try:
        before = (await client.get_inference_statistics(BATCHED)).model_stats[0]
        rng = np.random.default_rng(7)
        xs = [rng.standard_normal((1, n + 1)).astype(np.float32) for n in range(64)]
        idss = [rng.integers(0, 1000, (1, 1 + (7 * n) % 13)) for n in range(64)]
        results = await asyncio.gather(
            *(client.infer(BATCHED, _inputs(x, ids)) for x, ids in zip(xs, idss, strict=True))
        )
        # Triton counts a batch just after it answers: wait (briefly) for all 64 to be counted.
        for _ in range(50):
            after = (await client.get_inference_statistics(BATCHED)).model_stats[0]
            if after.inference_count - before.inference_count >= 64:
                break
            await asyncio.sleep(0.1)
    finally:
        await client.close()

    longest_ids = 0
    for x, ids, result in zip(xs, idss, results, strict=True):
        # y is cut back to this request's own length (config "unpad.y") and exact.
        np.testing.assert_array_equal(result.as_numpy("y"), x * np.float32(2) + np.float32(1))
        # ids_out comes back at its batch's padded length; the padding is pad_value + 1 = 0.
        out = result.as_numpy("ids_out")
        m = ids.shape[1]
        assert out.shape[0] == 1 and out.shape[1] >= m
        np.testing.assert_array_equal(out[:, :m], ids + 1)
        assert (out[:, m:] == 0).all()
        longest_ids = max(longest_ids, out.shape[1])
    assert longest_ids > 1, "no request was padded: nothing was batched with a longer one"

    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 64
    assert executions < inferences, f"{executions} executions for {inferences} inferences"
    print(f"64 ragged requests ran in {executions} onnxruntime runs")


async def test_bad_requests_get_clear_errors_and_server_keeps_serving(
    triton_server: TritonServer,
) -> None:
    client = InferenceServerClient(triton_server.grpc_url)
    try:
        wrong_dtype = InferInput("x", [1, 3], "INT32")
        wrong_dtype.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.int32))
        ids = InferInput("ids", [1, 1], "INT64")
        ids.set_data_from_numpy(np.array([[1]], dtype=np.int64))
        with pytest.raises(InferenceServerException) as bad_type:
            await client.infer(BATCHED, [wrong_dtype, ids])
        assert "x" in str(bad_type.value) and "INT32" in str(bad_type.value)

        only_x = InferInput("x", [1, 3], "FP32")
        only_x.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
        with pytest.raises(InferenceServerException) as missing:
            await client.infer(BATCHED, [only_x])
        assert "ids" in str(missing.value) or "expected 2 inputs" in str(missing.value)

        with pytest.raises(InferenceServerException) as unknown:
            await client.infer("no_such_model", [only_x])
        assert "no_such_model" in str(unknown.value)

        # Valid for Triton (dims [-1, -1]) but not for the graph: the backend answers with an
        # error response instead of crashing its stub.
        a, b = InferInput("a", [1, 3], "FP32"), InferInput("b", [1, 4], "FP32")
        a.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
        b.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        with pytest.raises(InferenceServerException) as graph_error:
            await client.infer(PAIR, [a, b])
        assert "onnxruntime" in str(graph_error.value)
        b = InferInput("b", [1, 3], "FP32")
        b.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
        pair = await client.infer(PAIR, [a, b])
        np.testing.assert_array_equal(pair.as_numpy("c"), np.array([[2.0, 3.0, 4.0]]))

        # Still serving, with correct values.
        x = np.array([[4.0, 5.0]], dtype=np.float32)
        result = await client.infer(BATCHED, _inputs(x, np.array([[9]], dtype=np.int64)))
        np.testing.assert_array_equal(result.as_numpy("y"), np.array([[9.0, 11.0]]))
        assert await client.is_server_ready()
    finally:
        await client.close()

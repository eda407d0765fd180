"""Running the real ``tritonserver`` that ships inside the nvidia-pytriton wheel.

The wheel carries Triton 2.51 with the python backend only. Three things make it usable as-is:

* a backend directory whose ``python/`` holds ``libtriton_python.so`` *and* a
  ``triton_python_backend_stub`` built for this interpreter's Python version (the wheel keeps
  one stub per version under ``python_backend_stubs/``; the backend looks for the stub next to
  its own library),
* an ``onnxruntime/model.py`` next to it: Triton runs ``<backend-dir>/<name>/model.py`` through
  the python backend when ``libtriton_<name>.so`` is missing, so standard
  ``platform: "onnxruntime_onnx"`` configs load unchanged (see ``triton_backends/onnxruntime``),
* an environment where the libraries and the stub's embedded Python resolve to this venv:
  ``LD_LIBRARY_PATH`` with the interpreter's own ``libpython`` first (the stub links
  ``libpython3.X.so.1.0``; without it the system one is picked up) and the wheel's
  ``nvidia_pytriton.libs`` (their RPATHs are ``$ORIGIN``-relative, so the copies in our backend
  dir do not find ``libcudart``/``libarchive``; the stub then never starts and the model load
  stalls until the python backend gives up on the stub), and ``PATH`` with the venv's ``bin`` first
  (the embedded interpreter finds ``pyvenv.cfg`` through ``python3`` on ``PATH``; without it
  ``import onnxruntime`` fails in the stub).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

__all__ = [
    "cleanup_shm",
    "find_tritonserver",
    "health_url",
    "prepare_backend_dir",
    "shm_region_prefix",
    "triton_command",
]

# Our python-based backends, one folder per backend name (each holds a model.py).
BACKENDS_SRC = Path(__file__).resolve().parent / "triton_backends"

# The python backend's shared memory per model instance: start large enough for a batch of
# encoder activations without growing in many small steps (tmpfs pages cost only when touched).
SHM_DEFAULT_BYTES = 16 * 1024 * 1024
SHM_GROWTH_BYTES = 16 * 1024 * 1024


class TritonNotInstalled(RuntimeError):
    """The nvidia-pytriton wheel (or the part of it we need) is not installed."""


def _wheel_dir() -> Path:
    # find_spec, not import: importing pytriton costs ~0.3 s and we only need its location.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled(
            "nvidia-pytriton is not installed; install the 'stack' extra "
            "(pip install 'polydub[stack]') to get a local tritonserver"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "tritonserver"


def find_tritonserver() -> Path:
    """The ``tritonserver`` binary inside the installed nvidia-pytriton wheel."""
    binary = _wheel_dir() / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonNotInstalled(f"tritonserver binary not found at {binary}")
    return binary


def _libs_dir() -> Path:
    # auditwheel puts the server's shared libraries next to the package: site-packages/<dist>.libs
    libs = _wheel_dir().parent.parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise TritonNotInstalled(f"nvidia_pytriton.libs not found at {libs}")
    return libs


def _stub_for_this_python() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = _wheel_dir() / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonNotInstalled(f"no python backend stub for Python {version} at {stub}")
    return stub


def _link(target: Path, link: Path) -> None:
    """Make ``link`` a symlink to ``target``, replacing whatever is there (idempotent)."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_symlink():
        dst.unlink()
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copy2(src, tmp)
    tmp.replace(dst)  # atomic: a running server never sees a half-written stub


def prepare_backend_dir(stack_dir: Path) -> Path:
    """Build ``<stack_dir>/triton/backends`` (python + our python-based backends); idempotent."""
    backends = stack_dir / "triton" / "backends"
    python_dir = backends / "python"
    if python_dir.is_symlink():
        python_dir.unlink()
    python_dir.mkdir(parents=True, exist_ok=True)
    # Copies, not links: Triton refuses a backend library whose real path "escapes" the
    # backend directory, and the python backend chmods a stub that fails its probe run, which
    # through a link would damage the installed wheel. About 3 MB in all.
    wheel_python = _wheel_dir() / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _copy_if_changed(wheel_python / name, python_dir / name)
    _copy_if_changed(_stub_for_this_python(), python_dir / "triton_python_backend_stub")
    for src in sorted(BACKENDS_SRC.iterdir()):
        if (src / "model.py").is_file():
            _link(src, backends / src.name)
    return backends


def _python_libdir() -> Path | None:
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if libdir and ldlibrary.endswith(".so") and (Path(libdir) / ldlibrary).exists():
        return Path(libdir)
    return None  # a static interpreter: the stub uses the system libpython of the same version


def shm_region_prefix(http_port: int) -> str:
    """Prefix of the python backend's /dev/shm regions; per server, so servers never collide."""
    return f"polydub_triton_{http_port}_"


def cleanup_shm(http_port: int) -> int:
    """Remove shared-memory regions a killed server left behind; returns how many."""
    removed = 0
    for path in Path("/dev/shm").glob(shm_region_prefix(http_port) + "*"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def health_url(http_port: int) -> str:
    return f"http://127.0.0.1:{http_port}/v2/health/ready"


def triton_command(
    *,
    model_repository: Path,
    backend_dir: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    model_control: str = "explicit",
    load_models: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """argv and the extra environment for one tritonserver.

    ``load_models``: None loads every model in the repository (``--load-model=*``), a list loads
    just those; with ``model_control="explicit"`` the rest can be loaded later through the API.
    """
    argv = [
        str(find_tritonserver()),
        f"--model-repository={model_repository}",
        f"--backend-directory={backend_dir}",
        f"--model-control-mode={model_control}",
        # Models named at start load before the endpoints open. Readiness must not depend on
        # every model: MMS-TTS voices are loaded and unloaded on demand, and strict readiness
        # would turn the server unready at each unload. A broken model does not take the server
        # down either (it stays UNAVAILABLE and the log says why).
        "--strict-readiness=false",
        "--exit-on-error=false",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        # CPU only: no CUDA pinned host pool to allocate, nothing to probe.
        "--pinned-memory-pool-byte-size=0",
        "--log-verbose=0",
        "--log-info=true",
        "--exit-timeout-secs=10",
        f"--backend-config=python,shm-region-prefix-name={shm_region_prefix(http_port)}",
        f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
    ]
    if model_control == "explicit":
        for name in ["*"] if load_models is None else load_models:
            argv.append(f"--load-model={name}")

    lib_dirs = [str(d) for d in (_python_libdir(), _libs_dir()) if d is not None]
    if os.environ.get("LD_LIBRARY_PATH"):
        lib_dirs.append(os.environ["LD_LIBRARY_PATH"])
    venv_bin = Path(sys.executable).parent  # not resolved: the venv's bin, not the base's
    env = {
        "LD_LIBRARY_PATH": ":".join(lib_dirs),
        "PATH": os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")]),
    }
    return argv, env

"""Run ffmpeg and ffprobe safely, and map their failures into polydub.errors.

Safety: argument lists (never a shell); ``-nostdin``; every input is either a file given as a
``file:`` URL (an absolute path, so a name such as ``-i`` or ``http:x`` is never an option or a
protocol) with ``-protocol_whitelist file``, or a pipe we feed ourselves with
``-protocol_whitelist pipe``; user media is opened with a ``-format_whitelist`` of the demuxers we
accept (``sniff.FORMAT_WHITELIST``: no playlist or concat demuxer can be chosen by probing);
every run has a timeout. Every ffmpeg/ffprobe that polydub starts goes through here, with the
binaries of the process's settings (``get_settings()``: ``POLYDUB_FFMPEG`` / ``POLYDUB_FFPROBE``),
read at each run, and ``media_nice`` steps nicer than the thread that starts it, so that the
process's own work (the API's requests, the worker's event loop) comes first on a busy CPU.

Who is to blame decides retry versus fail (``blame``):

=================  ==========================================  =====================================
failure            blame="input" (the user's media:            blame="internal" (our intermediates:
                   probe, extract, the stream mux copies)      stretch, mix, loudness, encode)
=================  ==========================================  =====================================
non-zero exit      InvalidInput ``corrupt_media``              InternalError ``ffmpeg_failed``
timeout            InvalidInput ``media_too_complex``          ServiceUnavailable ``ffmpeg_timeout``
killed by signal   ServiceUnavailable ``ffmpeg_killed``        ServiceUnavailable ``ffmpeg_killed``
binary missing     ConfigurationError ``ffmpeg_missing``       ConfigurationError ``ffmpeg_missing``
other OSError      ServiceUnavailable ``ffmpeg_unavailable``   ServiceUnavailable ``ffmpeg_unavailable``
=================  ==========================================  =====================================

A timeout on user media is permanent: the limits on size and duration bound honest work, so a
probe or decode that runs past its (generous) timeout is pathological media, and a retry would
burn the same time again. A timeout on our own intermediates means an overloaded machine: retry
(bounded by the queue's MaxDeliver). A signal (the OOM killer, a drain) is the machine's fault.

Error output is redacted: the folders of the ``file:`` paths on the command line are cut out
of it (the file names stay), since a refusal's message and detail reach API clients.

These functions block: call them from async code (the API, the worker) through
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from polydub.errors import (
    ConfigurationError,
    InternalError,
    InvalidInput,
    PolydubError,
    ServiceUnavailable,
)
from polydub.settings import get_settings

from .sniff import FORMAT_WHITELIST

Blame = Literal["input", "internal"]

STDERR_TAIL_CHARS = 2000


@dataclass(frozen=True)
class Completed:
    stdout: bytes
    stderr: str  # decoded, replacement characters for bad bytes
    seconds: float


def file_url(path: str | os.PathLike[str]) -> str:
    """A ``file:`` URL of an absolute path: never read as an option or another protocol."""
    text = os.fspath(path)
    if "\x00" in text or "\n" in text:
        raise InvalidInput("path contains control characters", code="unsupported_format")
    return "file:" + str(Path(text).absolute())


def file_input(
    path: str | os.PathLike[str],
    *,
    user_media: bool = True,
    options: Sequence[str] = (),
) -> list[str]:
    """Input arguments for a file: file protocol only and, for user media, the demuxer allow-list."""
    args = ["-protocol_whitelist", "file"]
    if user_media:
        args += ["-format_whitelist", FORMAT_WHITELIST]
    return [*args, *options, "-i", file_url(path)]


def pcm_input(sample_rate: int, channels: int) -> list[str]:
    """Input arguments for raw float32 little-endian PCM that we write to ffmpeg's stdin."""
    return [
        "-protocol_whitelist", "pipe",
        "-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels),
        "-i", "pipe:0",
    ]  # fmt: skip


def pcm_output(sample_rate: int, channels: int) -> list[str]:
    """Output arguments for raw float32 little-endian PCM on ffmpeg's stdout."""
    return ["-f", "f32le", "-acodec", "pcm_f32le", "-ar", str(sample_rate), "-ac", str(channels),
            "pipe:1"]  # fmt: skip


def run_ffmpeg(
    args: Sequence[str],
    *,
    timeout: float,
    blame: Blame,
    what: str,
    stdin: bytes | None = None,
    loglevel: str = "error",
) -> Completed:
    """Run ``ffmpeg <args>`` (outputs overwritten) and return its output; raise a PolydubError."""
    binary = get_settings().ffmpeg
    command = [binary, "-hide_banner", "-nostdin", "-nostats", "-loglevel", loglevel, "-y", *args]
    return _run(command, timeout=timeout, blame=blame, what=what, stdin=stdin)


def run_ffprobe(
    args: Sequence[str], *, timeout: float, blame: Blame = "input", what: str = "probe"
) -> Completed:
    command = [get_settings().ffprobe, "-hide_banner", "-loglevel", "error", *args]
    return _run(command, timeout=timeout, blame=blame, what=what, stdin=None)


def _run(
    command: list[str], *, timeout: float, blame: Blame, what: str, stdin: bytes | None
) -> Completed:
    started = time.monotonic()
    try:
        proc = _communicate(command, stdin=stdin, timeout=timeout, nice=get_settings().media_nice)
    except subprocess.TimeoutExpired as exc:
        tail = _tail(exc.stderr, command)
        error: PolydubError
        if blame == "input":
            error = InvalidInput(
                f"{what}: the media took longer than {timeout:.0f} s to process",
                code="media_too_complex",
                detail={"stderr": tail},
            )
        else:
            error = ServiceUnavailable(
                f"{what}: ffmpeg timed out after {timeout:.0f} s",
                code="ffmpeg_timeout",
                detail={"stderr": tail},
            )
        raise error from exc
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"{command[0]} is not installed or not on PATH", code="ffmpeg_missing"
        ) from exc
    except OSError as exc:
        raise ServiceUnavailable(f"{what}: cannot start {command[0]}: {exc}",
                                 code="ffmpeg_unavailable") from exc  # fmt: skip
    seconds = time.monotonic() - started
    stderr = _redact(proc.stderr.decode("utf-8", "replace"), command)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise ServiceUnavailable(
            f"{what}: {command[0]} was killed by {name}",
            code="ffmpeg_killed",
            detail={"stderr": _tail(stderr, command)},
        )
    if proc.returncode != 0:
        detail = {"stderr": _tail(stderr, command), "exit_code": proc.returncode}
        if blame == "input":
            raise InvalidInput(
                f"{what}: the media cannot be read: {_last_line(stderr)}",
                code="corrupt_media",
                detail=detail,
            )
        raise InternalError(f"{what}: ffmpeg failed: {_last_line(stderr)}",
                            code="ffmpeg_failed", detail=detail)  # fmt: skip
    return Completed(stdout=proc.stdout, stderr=stderr, seconds=seconds)


def _communicate(
    command: list[str], *, stdin: bytes | None, timeout: float, nice: int
) -> subprocess.CompletedProcess[bytes]:
    """``subprocess.run(command, input=stdin, capture_output=True, timeout=timeout)``, with the
    child ``nice`` steps nicer than this thread as soon as it has started. subprocess has no
    option for that, and a ``preexec_fn`` is unsafe in the threads these runs are called from;
    ffmpeg starts its own threads later, and they inherit the priority."""
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        if nice:
            target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
            with contextlib.suppress(OSError):  # it has already ended
                os.setpriority(os.PRIO_PROCESS, proc.pid, target)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(command, timeout, output=out, stderr=err) from None
        except BaseException:
            proc.kill()  # leaving the block waits for it
            raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _tail(data: bytes | str | None, command: Sequence[str]) -> str:
    if data is None:
        return ""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return _redact(text, command)[-STDERR_TAIL_CHARS:]


def _redact(text: str, command: Sequence[str]) -> str:
    """``text`` without the folders of the command's ``file:`` paths (a spool or work folder)."""
    folders = {os.path.dirname(arg[5:]) for arg in command if arg.startswith("file:")}
    for folder in sorted(folders - {"", "/"}, key=len, reverse=True):
        text = text.replace(folder + "/", "")
    return text


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error output"


def has_filter(name: str) -> bool:
    """Whether this ffmpeg build has an audio filter (e.g. ``rubberband``); cached per process."""
    return name in _filters()


_FILTERS: frozenset[str] | None = None


def _filters() -> frozenset[str]:
    global _FILTERS
    if _FILTERS is None:
        out = run_ffmpeg(["-filters"], timeout=30, blame="internal", what="list filters",
                         loglevel="quiet").stdout.decode("utf-8", "replace")  # fmt: skip
        names = set()
        for line in out.splitlines():
            parts = line.split()
            # Lines look like " ..C rubberband        A->A       Apply time-stretching ..."
            if len(parts) >= 3 and "->" in parts[2]:
                names.add(parts[1])
        _FILTERS = frozenset(names)
    return _FILTERS

"""Bringing a python-backend model back after its stub process died.

Triton runs each instance of a python model (the ``whisper`` BLS, the NLLB and TTS BLS models)
in a stub process of its own. When the kernel's OOM killer (or anything else) ends a stub, the
Triton build that polydub ships (nvidia-pytriton 0.7.0's python backend) does not start it
again: every later request of that instance fails with "Stub process 'whisper_0_0' is not
healthy" until the model is loaded again. With explicit model control (the local stack and the
chart both start tritonserver with ``--model-control-mode=explicit``), loading a model that is
already loaded reloads it: Triton builds fresh instances (new stubs) and swaps them in.

``StubRecovery`` does that reload from the client side, once per failure burst (the many
requests failing at the same moment trigger one reload, the rest wait for it and retry) and at
most ``max_reloads`` times per model in ``window_s`` seconds: a model that dies again at once
(it cannot fit in memory, it crashes on load) is not reloaded in a loop; its requests keep
failing with a retryable error until the window lets another reload through.

Every worker process has a ``StubRecovery`` of its own, so the lock above only joins the
failures of one process. Across processes, each reload writes its wall-clock time into the
model's config (``RELOAD_PARAMETER``), which Triton serves once the reloaded model is in:
before reloading, ``last_reload`` reads it, and a reload that finished after the failing
request was sent (by any process) is not done again. (Triton serves the new config only once
the reload is done, and loads one model at a time: a request sent while another process's
reload is still running can still cause one more reload, which the window bounds.) No request
waits for another's reload past its own deadline (``recover(wait_s=)``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable

from polydub.errors import ServiceUnavailable

log = logging.getLogger("polydub.triton")

# A config parameter that only makes each reload's config differ from the loaded one (a model
# ignores parameters it does not know).
RELOAD_PARAMETER = "polydub_reload"
# Triton's python backend, model_instance_state: "Stub process '<instance name>' is not
# healthy." (and "Stub process is not healthy." from older paths)
_UNHEALTHY = re.compile(r"stub process (?:'[^']*' )?is not healthy", re.IGNORECASE)


def stub_unhealthy(message: str) -> bool:
    """Whether a Triton error says a python-backend stub process is gone."""
    return _UNHEALTHY.search(message) is not None


class StubRecovery:
    """Reload a model whose python stub died: one reload per burst, ``max_reloads`` per window.

    ``reload``: loads the model by name (``InferenceServerClient.load_model``), returning once
    Triton has it ready (or raising). ``last_reload``: the wall-clock time (``wall``, seconds)
    of the model's last reload by any process, None when unknown. ``clock``: monotonic seconds
    (tests pass their own clocks).
    """

    def __init__(
        self,
        reload: Callable[[str], Awaitable[None]],
        *,
        max_reloads: int = 3,
        window_s: float = 600.0,
        last_reload: Callable[[str], Awaitable[float | None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if max_reloads < 0 or window_s <= 0:
            raise ValueError("max_reloads must be >= 0 and window_s > 0")
        self._reload = reload
        self.max_reloads = max_reloads
        self.window_s = window_s
        self._clock = clock
        self._last_reload = last_reload
        self._wall = wall
        self._locks: dict[str, asyncio.Lock] = {}
        self._reloads: dict[str, deque[float]] = {}  # model -> times reloads finished
        self._recovered: dict[str, float] = {}  # model -> when its last good reload finished
        self.reloaded = 0  # reloads done by this client, all models

    async def recover(
        self, model: str, sent_at: float, message: str, *, wait_s: float | None = None
    ) -> ServiceUnavailable:
        """After a request sent at ``sent_at`` (this object's clock) failed with ``message``
        (a stub-unhealthy error): reload ``model`` unless a reload (this process's or another's)
        finished after that request was sent (it failed on the dead instance; the model is
        back) or the budget is spent. ``wait_s``: the most seconds to wait for a reload under
        way here (the request's remaining deadline). Returns the retryable error to raise or
        retry on."""
        lock = self._locks.setdefault(model, asyncio.Lock())
        # A free lock is taken even with no time left: the failure that finds no reload under
        # way must start one, or a burst of late requests would leave the model dead.
        wait = None if wait_s is None or not lock.locked() else max(wait_s, 0.0)
        try:
            await asyncio.wait_for(lock.acquire(), wait)
        except TimeoutError:
            return ServiceUnavailable(
                f"{message} ({model!r} is being reloaded; its deadline ran out waiting)",
                code="triton_stub_reloading",
            )
        try:
            return await self._recover(model, sent_at, message)
        finally:
            lock.release()

    async def _recover(self, model: str, sent_at: float, message: str) -> ServiceUnavailable:
        done = self._reloads.setdefault(model, deque())
        if self._recovered.get(model, -float("inf")) < sent_at:
            await self._seen_elsewhere(model)
        if self._recovered.get(model, -float("inf")) >= sent_at:
            return ServiceUnavailable(
                f"{message} (the model was reloaded since; retry)", code="triton_stub_reloaded"
            )
        now = self._clock()
        while done and now - done[0] > self.window_s:
            done.popleft()
        if len(done) >= self.max_reloads:
            return ServiceUnavailable(
                f"{message} ({len(done)} reloads of {model!r} in the last "
                f"{self.window_s:.0f} s already; not reloading again yet)",
                code="triton_stub_unhealthy",
            )
        log.warning("triton: %s; reloading model %r", message, model)
        try:
            await self._reload(model)
        except Exception as exc:
            log.warning("triton: reloading %r failed: %s", model, exc)
            return ServiceUnavailable(
                f"{message} (reloading {model!r} failed: {exc})", code="triton_stub_unhealthy"
            )
        finally:
            # a failed reload counts too: a model that cannot load must not be retried
            # without bound either
            done.append(self._clock())
        self.reloaded += 1
        self._recovered[model] = done[-1]
        return ServiceUnavailable(
            f"{message} (model {model!r} reloaded; retry)", code="triton_stub_reloaded"
        )

    async def _seen_elsewhere(self, model: str) -> None:
        """Take a reload another process finished (the time Triton's config of ``model`` says)
        as this process's own, on this object's clock."""
        if self._last_reload is None:
            return
        try:
            at = await self._last_reload(model)
        except Exception as exc:  # unknown: reload as if no one had
            log.info("triton: reading %r's last reload failed: %s", model, exc)
            return
        if at is not None:
            local = self._clock() - (self._wall() - at)
            self._recovered[model] = max(self._recovered.get(model, -float("inf")), local)

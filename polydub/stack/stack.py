"""Bring the local servers up in order, wait for each to be healthy, and take them all down."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from polydub.settings import Settings
from polydub.stack.models import ModelsError, Provisioned, provision
from polydub.stack.process import SupervisedProcess
from polydub.stack.servers import FACTORIES, Server, build_servers


class StackError(RuntimeError):
    """A server did not come up; the message names it and carries the tail of its log."""


@dataclass(frozen=True)
class ServerStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    endpoints: dict[str, str]
    seconds_to_healthy: float | None = None


class Stack:
    def __init__(
        self,
        settings: Settings,
        only: list[str] | None = None,
        notify: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.settings = settings
        self.notify = notify  # one line per step worth telling a person (model export, loads)
        self.models: Provisioned | None = None
        self.run_dir = settings.stack_dir.resolve() / "run"
        unknown = set(only or ()) - set(FACTORIES)
        if unknown:
            raise StackError(
                f"unknown server(s): {', '.join(sorted(unknown))}; known: {', '.join(FACTORIES)}"
            )
        self.servers = build_servers(settings, only or None)

    def process(self, server: Server) -> SupervisedProcess:
        return SupervisedProcess(server.process, self.run_dir)

    def up(self) -> list[ServerStatus]:
        """Start every server that is not already running and wait until it is healthy."""
        statuses = []
        for server in self.servers:
            if server.needs_models and self.models is None:
                self.models = self._provision()
            statuses.append(self._up_one(server))
        return statuses

    def _provision(self) -> Provisioned:
        """Before the API and the worker: models exported if there are none, loaded in Triton."""
        try:
            return provision(self.settings, self.run_dir, self.notify)
        except ModelsError as exc:
            raise StackError(f"models: {exc}") from exc

    def _up_one(self, server: Server) -> ServerStatus:
        proc = self.process(server)
        started = time.monotonic()
        if proc.pid() is None:
            if server.healthy():
                raise StackError(
                    f"{server.name}: something else already answers on its port "
                    f"({server.endpoints}); stop it or choose another port (POLYDUB_*_PORT)."
                )
            try:
                server.prepare()
            except subprocess.CalledProcessError as exc:
                output = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip()
                raise StackError(
                    f"{server.name}: preparing its data failed: {output[-2000:]}"
                ) from exc
            proc.start()
        deadline = started + server.startup_timeout
        while not server.healthy():
            if proc.pid() is None:
                raise StackError(
                    f"{server.name} exited before it became healthy. "
                    f"Last lines of {proc.log_file}:\n{proc.log_tail()}"
                )
            if time.monotonic() > deadline:
                proc.stop()
                raise StackError(
                    f"{server.name} was not healthy after {server.startup_timeout:.0f}s. "
                    f"Last lines of {proc.log_file}:\n{proc.log_tail()}"
                )
            time.sleep(0.1)
        server.after_healthy()
        return ServerStatus(
            server.name, True, True, proc.pid(), server.endpoints, time.monotonic() - started
        )

    def down(self) -> None:
        # Reverse order: clients (Triton) before the stores they might write to.
        for server in reversed(self.servers):
            self.process(server).stop()
            server.after_stop()

    def status(self) -> list[ServerStatus]:
        result = []
        for server in self.servers:
            pid = self.process(server).pid()
            result.append(
                ServerStatus(
                    server.name,
                    pid is not None,
                    pid is not None and server.healthy(),
                    pid,
                    server.endpoints,
                )
            )
        return result

"""The platform's services as child processes, started and stopped one at a time."""

from __future__ import annotations

import subprocess
from pathlib import Path

from trellis_devstack.stack import Stack


class ServiceProcesses:
    """The services of a Stack as child processes, stoppable one at a time."""

    def __init__(self, stack: Stack, logs: Path) -> None:
        self.stack = stack
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        """Start `<name> serve` with the stack's environment plus `extra_env`."""
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(  # noqa: S603 - our own service command
            self.stack.command(name, "serve"),
            env={**self.stack.env(name), **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_all(self) -> None:
        for name in self.stack.services:
            self.start(name)

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the platform is ready (Stack.wait_ready). A service that exits before fails the
        wait at once; either failure carries the end of every service's log."""
        try:
            self.stack.wait_ready(timeout, alive=self._all_running)
        except (TimeoutError, RuntimeError) as exc:
            tails = [f"--- {name} ---\n{self.log_text(name)[-4000:]}" for name in self.procs]
            raise type(exc)("\n".join([str(exc), *tails])) from None

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def _all_running(self) -> None:
        exited = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        if exited:
            raise RuntimeError(f"services exited before the platform was ready: {exited}")

    def stop(self, name: str) -> int:
        proc = self.procs.pop(name)
        proc.terminate()
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def kill(self, name: str) -> None:
        """SIGKILL the service, as a crash or an OOM kill would: nothing of it runs after."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

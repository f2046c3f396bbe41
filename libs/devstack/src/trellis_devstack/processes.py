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

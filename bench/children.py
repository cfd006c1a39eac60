"""Child processes the harness starts: output to files, readiness by a marker line, stopped by PID.

Each child gets ``PR_SET_PDEATHSIG`` so it dies with the harness even if the harness itself is
killed, and is always stopped (SIGTERM, then SIGKILL) from a ``finally``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
LOG_TAIL = 64 * 1024


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path | None = None
    ) -> None:
        self.name = name
        self.stdout_path = cwd / f"{name}.out"
        self.stderr_path = cwd / f"{name}.err"
        self._log = log
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                list(argv), env=dict(env), cwd=cwd, stdout=out, stderr=err, preexec_fn=_die_with_parent
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        """What the child has written to stdout so far (the gateway's access log)."""
        return self.stdout_path.read_text(errors="replace")

    def output(self) -> str:
        """Everything the child has written so far (stdout, then stderr)."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")

    def wait_for(self, marker: str, timeout: float) -> str:
        """The first output line holding ``marker``; RuntimeError if the child exits or is too slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if marker in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        if self._log is not None:
            # Kept beside the report: the place to look when a run shows errors.
            tail = self.output()[-LOG_TAIL:]
            with open(self._log, "a") as log:
                log.write(f"=== {self.name} (pid {self.pid}, exit {self.process.returncode}) ===\n{tail}\n")

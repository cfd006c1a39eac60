"""What every run needs: the targets, the processes to measure, and a fresh gateway.

Each gateway configuration is a *side* of every run, next to the direct one: ``gateway``, and
with ``--upstreams 1,3`` also ``gateway_3up`` (see fleet.py). Only one gateway runs at a time
when every run gets a fresh one, so an idle gateway never shares the measured one's core.
"""

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
    upstreams: tuple[Target, ...]  # every fast upstream's control route (never through a gateway)
    upstream_pids: tuple[int, ...]
    servers: dict[str, GatewayServer]  # side -> gateway; the first is GATEWAY
    admin_upstreams: dict[str, str | None]  # side -> X-Gateway-Upstream for admin routes
    plan: Plan
    tag: str  # unique per harness run, for hang-up stream names
    warm_seconds: float
    steal_lines: dict[str, str]  # role -> /proc/stat line, from the pinning

    @property
    def upstream(self) -> Target:
        """The direct target's upstream."""
        return self.upstreams[0]

    @property
    def server(self) -> GatewayServer:
        return self.servers[GATEWAY]

    def sides(self) -> list[str]:
        return [DIRECT, *self.servers]

    def gateway(self, side: str = GATEWAY) -> Target:
        server = self.servers[side]
        return Target(side, "127.0.0.1", server.port, server.key, self.admin_upstreams[side])

    def pids(self, side: str = GATEWAY) -> dict[str, tuple[int, ...]]:
        """Processes by role. On a direct run, "gateway" is whatever gateway is up (idle)."""
        if side in self.servers:
            gateways: tuple[int, ...] = (self.servers[side].pid,)
        else:
            gateways = tuple(server.pid for server in self.servers.values() if server.running)
        return {GATEWAY: gateways, "upstream": self.upstream_pids, "load": (os.getpid(),)}

    def meter(self, target: Target, watch: bool = False) -> Meter:
        """A meter for one run; ``watch`` samples the gateway's RSS (on gateway runs)."""
        server = self.servers.get(target.name)
        watched = server.pid if watch and server is not None else None
        return Meter(self.pids(target.name), watched, steal=self.steal_lines)

    async def rss_after_mib(self, side: str = GATEWAY) -> float:
        """The gateway's RSS once a run's connections are closed and it has had a moment to free
        what they held: the memory it keeps after a burst."""
        await asyncio.sleep(self.plan.settle)
        return procstat.rss_kb(self.servers[side].pid) / 1024

    async def ready(self, side: str) -> Target:
        """The target for the next run: a gateway run gets a freshly started, warmed gateway.

        Fresh processes keep runs independent: no heap, pool or cache is inherited from the run
        before, and memory growth belongs to the run that caused it.
        """
        if side == DIRECT:
            return self.direct
        if not self.plan.fresh_gateway:
            return self.gateway(side)
        await asyncio.to_thread(self._start_alone, side)
        target = self.gateway(side)
        await self.warm_up(target)
        return target

    def _start_alone(self, side: str) -> None:
        for name, server in self.servers.items():
            if name != side:
                server.stop()
        self.servers[side].start()

    async def warm_up(self, target: Target) -> None:
        """Imports, caches and pools filled outside any measured window."""
        for path in SMALL_PATHS:
            await closed_loop(target, small_chat(target, path), 4, self.warm_seconds, Meter(self.pids(target.name)))

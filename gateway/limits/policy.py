"""The limits policy: per-key quotas first (429, policy), then a fair slot on the upstream (503 on
timeout, capacity).

Before forwarding it reserves an estimate of the request's tokens, so concurrent requests cannot
overshoot a token budget together; when the request is over (completed, failed, or abandoned by
its client mid-stream) the reservation is settled to the tokens really used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.estimate import estimate
from gateway.flow import Flow
from gateway.inbound import Inbound
from gateway.keystore import UNLIMITED, Limits
from gateway.limits import Grant, Limiter, Quota, refusal, window_headers
from gateway.limits.queue import FairQueue, Ticket
from gateway.surfaces import RouteClass

_EMBEDDINGS = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})


def effective(limits: Limits, defaults: Quota) -> Quota:
    """A key's own values override the gateway defaults; UNLIMITED lifts a limit."""

    def pick(own: int | None, default: int | None) -> int | None:
        if own is None:
            return default
        return None if own == UNLIMITED else own

    return Quota(
        rpm=pick(limits.rpm, defaults.rpm),
        tpm=pick(limits.tpm, defaults.tpm),
        tpd=pick(limits.tpd, defaults.tpd),
        concurrency=pick(limits.concurrency, defaults.concurrency),
    )


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request holds while it runs: its reservation and its upstream slot."""

    quota: Quota
    grant: Grant | None
    ticket: Ticket | None


class LimitPolicy:
    def __init__(
        self,
        limiter: Limiter,
        queue: FairQueue | None,
        *,
        defaults: Quota,
        default_completion_tokens: int,
    ) -> None:
        self._limiter = limiter
        self._queue = queue
        self._defaults = defaults
        self._default_completion = default_completion_tokens

    async def admit(self, flow: Flow, inbound: Inbound) -> Admission:
        principal = flow.caller()
        quota = effective(principal.limits, self._defaults)
        inference = flow.route.route_class is RouteClass.INFERENCE
        tokens = (
            estimate(flow.json, self._default_completion, embedding=flow.route.name in _EMBEDDINGS) if inference else 0
        )
        grant: Grant | None = None
        zero = [name for name in ("rpm", "tpm", "tpd", "concurrency") if getattr(quota, name) == 0]
        if zero:
            # A limit of 0 blocks the key; no amount of waiting helps.
            raise refusal(
                f"this API key may not make requests ({zero[0]} limit is 0)", 3600, None, None, can_wait=False
            )
        if not quota.unlimited:
            grant = await self._limiter.acquire(principal.key_id, quota, tokens)
            flow.response_headers.extend(window_headers(grant.requests, grant.tokens))
        if not inference or self._queue is None:
            return Admission(quota, grant, None)
        queued_at = time.perf_counter()
        try:
            ticket = await self._queue.acquire(principal.key_id, principal.limits.weight or 1)
        except BaseException:
            flow.queue_wait = time.perf_counter() - queued_at
            # Refused or abandoned while queued: the request never ran.
            if grant is not None:
                self._limiter.settle(principal.key_id, quota, grant, 0)
            raise
        flow.queue_wait = ticket.waited
        flow.response_headers.append((b"x-queue-wait-ms", f"{ticket.waited * 1000:.0f}".encode()))
        flow.response_headers.append((b"x-queue-position", str(ticket.position).encode()))
        return Admission(quota, grant, ticket)

    def finish(self, flow: Flow, admitted: Admission) -> None:
        if admitted.ticket is not None and self._queue is not None:
            self._queue.release()
        if admitted.grant is not None:
            usage = flow.usage
            used = usage.total if usage is not None else 0
            self._limiter.settle(flow.caller().key_id, admitted.quota, admitted.grant, used)

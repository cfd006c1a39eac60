"""The limits policy: per-key quotas first (429, policy), then a fair slot on the upstream (503 on
timeout, capacity).

Before forwarding it reserves an estimate of the request's tokens, so concurrent requests cannot
overshoot a token budget together; when the request is over (completed, failed, or abandoned by
its client mid-stream) the reservation is settled to the tokens really used.
"""

from __future__ import annotations

import time

from gateway.access import read_json
from gateway.estimate import estimate
from gateway.flow import Flow
from gateway.inbound import Inbound
from gateway.keystore import UNLIMITED, Limits
from gateway.limits import Grant, Limiter, Quota, refusal, window_headers
from gateway.limits.queue import FairQueue, Ticket
from gateway.sse import UsageStripper
from gateway.surfaces import RouteClass

# /v1 streams that carry usage only when asked (see sse.py).
_USAGE_ON_REQUEST = frozenset({"/v1/chat/completions", "/v1/completions"})
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


class LimitPolicy:
    def __init__(
        self,
        limiter: Limiter,
        queue: FairQueue | None,
        *,
        defaults: Quota,
        default_completion_tokens: int,
        max_body_bytes: int,
    ) -> None:
        self._limiter = limiter
        self._queue = queue
        self._defaults = defaults
        self._default_completion = default_completion_tokens
        self._max_body = max_body_bytes

    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        principal = flow.principal
        if principal is None:
            raise RuntimeError("limits are checked after authentication")
        quota = effective(principal.limits, self._defaults)
        inference = flow.route.route_class is RouteClass.INFERENCE
        tokens = 0
        if inference:
            body = await read_json(flow, inbound, self._max_body)
            tokens = estimate(body, self._default_completion, embedding=flow.route.name in _EMBEDDINGS)
            if body is not None and flow.route.name in _USAGE_ON_REQUEST:
                self._ask_for_usage(flow)
        grant: Grant | None = None
        zero = [name for name in ("rpm", "tpm", "tpd", "concurrency") if getattr(quota, name) == 0]
        if zero:
            # A limit of 0 blocks the key; no amount of waiting helps.
            raise refusal(
                f"this API key may not make requests ({zero[0]} limit is 0)", 3600, None, None, can_wait=False
            )
        if not quota.unlimited:
            grant = await self._limiter.acquire(principal.key_id, quota, tokens)
            flow.meta["limits"] = (quota, grant)
            flow.response_headers.extend(window_headers(grant.requests, grant.tokens))
        if not inference or self._queue is None:
            return
        queued_at = time.perf_counter()
        try:
            ticket = await self._queue.acquire(principal.key_id, principal.limits.weight or 1)
        except BaseException:
            flow.queue_wait = time.perf_counter() - queued_at
            # Refused or abandoned while queued: the request never ran.
            if grant is not None:
                self._limiter.settle(principal.key_id, quota, grant, 0)
                del flow.meta["limits"]
            raise
        flow.meta["ticket"] = ticket
        flow.queue_wait = ticket.waited
        flow.response_headers.append((b"x-queue-wait-ms", f"{ticket.waited * 1000:.0f}".encode()))
        flow.response_headers.append((b"x-queue-position", str(ticket.position).encode()))

    def finish(self, flow: Flow) -> None:
        ticket: Ticket | None = flow.meta.pop("ticket", None)
        if ticket is not None and self._queue is not None:
            self._queue.release()
        limits: tuple[Quota, Grant] | None = flow.meta.pop("limits", None)
        if limits is not None and flow.principal is not None:
            usage = flow.usage
            used = usage.total if usage is not None else 0
            self._limiter.settle(flow.principal.key_id, limits[0], limits[1], used)

    def _ask_for_usage(self, flow: Flow) -> None:
        body = flow.meta.get("json")
        if body is None or body.get("stream") is not True:
            return
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return
        merged = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        flow.body = body.replace("stream_options", merged)
        flow.transform = UsageStripper()

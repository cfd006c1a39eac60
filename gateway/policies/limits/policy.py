"""The limits policy: per-key quotas (429, policy). The fair slot on a server (503 on timeout,
capacity) is taken afterwards, by the routing policy, on the server it chooses.

Before forwarding it reserves an estimate of the request's tokens, so concurrent requests cannot
overshoot a token budget together; when the request is over (completed, failed, or abandoned by
its client mid-stream) the reservation is settled to the tokens really used.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.flow import Flow
from gateway.keys.store import QUOTA_NAMES, UNLIMITED, Limits
from gateway.ollama.estimate import estimate
from gateway.ollama.surfaces import RouteClass
from gateway.policies.limits import Grant, Limiter, Quota, refusal, window_headers
from gateway.proxy.inbound import Inbound

# Distinct key limits resolved and kept at once (most keys share a few).
_QUOTAS_HELD = 4096


def effective(limits: Limits, defaults: Quota) -> Quota:
    """A key's own values override the gateway defaults; UNLIMITED lifts a limit."""

    def pick(own: int | None, default: int | None) -> int | None:
        if own is None:
            return default
        return None if own == UNLIMITED else own

    return Quota(**{name: pick(getattr(limits, name), getattr(defaults, name)) for name in QUOTA_NAMES})


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request holds while it runs: its reservation."""

    quota: Quota
    grant: Grant | None


class LimitPolicy:
    def __init__(
        self,
        limiter: Limiter,
        *,
        defaults: Quota,
        default_completion_tokens: int,
    ) -> None:
        self._limiter = limiter
        self._defaults = defaults
        self._default_completion = default_completion_tokens
        # Each distinct set of key limits, resolved once: the quota, the first limit set to 0
        # (such a key may not make requests) and whether nothing is limited at all.
        self._quotas: dict[Limits, tuple[Quota, str | None, bool]] = {}

    def _quota(self, limits: Limits) -> tuple[Quota, str | None, bool]:
        resolved = self._quotas.get(limits)
        if resolved is None:
            quota = effective(limits, self._defaults)
            zero = next((name for name in QUOTA_NAMES if getattr(quota, name) == 0), None)
            if len(self._quotas) >= _QUOTAS_HELD:
                self._quotas.clear()  # as many distinct limits as keys: start again
            resolved = self._quotas[limits] = (quota, zero, quota.unlimited)
        return resolved

    async def admit(self, flow: Flow, inbound: Inbound) -> Admission:
        principal = flow.caller()
        quota, zero, unlimited = self._quota(principal.limits)
        inference = flow.route.route_class is RouteClass.INFERENCE
        facts = flow.json
        tokens = 0
        if inference and facts is not None:
            tokens = estimate(facts.prompt_tokens, facts.completion_cap, self._default_completion, flow.route.embedding)
        grant: Grant | None = None
        if zero is not None:
            # A limit of 0 blocks the key; no amount of waiting helps.
            raise refusal(f"this API key may not make requests ({zero} limit is 0)", 3600, None, None, can_wait=False)
        if not unlimited:
            grant = await self._limiter.acquire(principal.key_id, quota, tokens)
            flow.response_headers.extend(window_headers(grant.requests, grant.tokens))
        return Admission(quota, grant)

    def finish(self, flow: Flow, admitted: Admission) -> None:
        if admitted.grant is not None:
            # A request refused or abandoned before it ran (in a queue, say) used nothing.
            usage = flow.usage
            used = usage.total if usage is not None else 0
            self._limiter.settle(flow.caller().key_id, admitted.quota, admitted.grant, used)

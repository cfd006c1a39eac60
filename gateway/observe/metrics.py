"""Prometheus metrics, on the gateway's own registry (never the process-global one).

Every label has a bounded set of values: route names come from the route table, key names from
the key store (which operators control), statuses are HTTP codes, and model names are capped (past
``max_models`` distinct values they are counted as "other", so random names cannot explode it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.fleet import Fleet, Member, State
from gateway.observe.record import RequestRecord

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_REFUSALS = frozenset(
    {"unauthorized", "forbidden", "auth_throttled", "rate_limited", "queue_timeout", "bad_request", "body_too_large"}
)

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    def __init__(self, *, max_models: int = 100) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._models: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._max_models = max_models
        self.requests = Counter(
            "gateway_requests",
            "Requests handled, by route class, route, status, key name and the server that answered.",
            ["route_class", "route", "status", "key", "upstream"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from the first byte in to the last byte out.",
            ["route_class"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "gateway_time_to_first_byte_seconds",
            "Time until the upstream's response started (includes model loads and queueing).",
            ["route_class"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens reported by the upstream, by key, model and kind (prompt, completion).",
            ["key", "model", "kind"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "gateway_refusals",
            "Requests the gateway refused itself, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "gateway_connections_refused",
            "New connections answered 503 and closed because the process was near its file-descriptor limit.",
            registry=self.registry,
        )
        self.lockouts = Counter(
            "gateway_auth_lockouts",
            "Addresses locked out for sending too many wrong keys.",
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream failures: unreachable, broken mid-response, timed out, or an error inside a stream.",
            ["kind"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time inference requests waited for a slot on the upstream.",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests past every check and the queue, being answered now (queued ones: gateway_queue_depth).",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Inference requests waiting for a slot, by server.",
            ["upstream"],
            registry=self.registry,
        )
        self.upstream_in_flight = Gauge(
            "gateway_upstream_requests_in_flight",
            "Requests running on each server now, past its queue (queued ones: gateway_queue_depth).",
            ["upstream"],
            registry=self.registry,
        )
        self.upstream_up = Gauge(
            "gateway_upstream_up",
            "1 while the server answers the watcher (only with several servers).",
            ["upstream"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "gateway_upstream_failovers",
            "Requests moved to another server because this one could not be reached.",
            ["upstream"],
            registry=self.registry,
        )

    def track_in_flight(self, read: Callable[[], float]) -> None:
        self.in_flight.set_function(read)

    def track_fleet(self, fleet: Fleet) -> None:
        watched = fleet.solo is None
        for member in fleet.members:
            self.queue_depth.labels(member.name).set_function(_reader(member, lambda m: m.queued))
            self.upstream_in_flight.labels(member.name).set_function(_reader(member, lambda m: m.in_flight))
            if watched:
                # One server has no watcher: /readyz and the start-up line say whether it answers.
                self.upstream_up.labels(member.name).set_function(_reader(member, lambda m: m.state is State.UP))

    def _child(self, metric: Any, *labels: str) -> Any:
        # prometheus_client's labels() costs microseconds per call; the label sets are bounded.
        child = self._children.get((id(metric), labels))
        if child is None:
            child = self._children[(id(metric), labels)] = metric.labels(*labels)
        return child

    def __call__(self, record: RequestRecord) -> None:
        """A sink: observe one finished request."""
        key = record.key_name or ""
        self._child(
            self.requests, record.route_class, record.route, str(record.status), key, record.upstream or ""
        ).inc()
        self._child(self.duration, record.route_class).observe(record.duration)
        if record.ttfb is not None:
            self._child(self.ttfb, record.route_class).observe(record.ttfb)
        if record.route_class == "inference" and (record.forwarded or record.queue_wait > 0):
            # Only requests that reached the queue: refusals before it would pile up at zero.
            self.queue_wait.observe(record.queue_wait)
        if record.prompt_tokens or record.completion_tokens:
            model = self._model_label(record.model or "")
            self._child(self.tokens, key, model, "prompt").inc(record.prompt_tokens)
            self._child(self.tokens, key, model, "completion").inc(record.completion_tokens)
        if record.outcome in _REFUSALS:
            self._child(self.refusals, record.outcome).inc()
        elif record.outcome in ("upstream_error", "upstream_timeout"):
            self._child(self.upstream_errors, record.outcome).inc()
        if record.failed_over_from is not None:
            self._child(self.failovers, record.failed_over_from).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _model_label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) < self._max_models:
            self._models.add(model)
            return model
        return "other"


def _reader(member: Member, read: Callable[[Member], float]) -> Callable[[], float]:
    return lambda: float(read(member))

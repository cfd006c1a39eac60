"""The terminal record of one request: what the access log, metrics and accounting consume."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.flow import Flow


@dataclass(frozen=True, slots=True)
class RequestRecord:
    time: float  # wall-clock start, seconds since the epoch
    request_id: str
    key_id: str | None
    key_name: str | None
    client: str
    method: str
    path: str
    route: str
    route_class: str
    model: str | None
    status: int
    upstream_status: int | None
    bytes_in: int
    bytes_out: int
    duration: float
    ttfb: float | None
    overhead: float
    queue_wait: float
    forwarded: bool  # the request was sent upstream (not refused by the gateway first)
    streamed: bool
    prompt_tokens: int
    completion_tokens: int
    tokens_exact: bool
    outcome: str
    # The server that answered (its configured name; "*" for an answer from every server).
    upstream: str | None = None
    failed_over_from: str | None = None
    # The buffered request body, if one was read (never logged unless a setting asks for it).
    request_body: bytes | None = None
    # Why authentication refused (never shown to the client), and the Ollama public key's
    # fingerprint when the request was signed.
    auth: str | None = None
    public_key: str | None = None


def record_of(flow: Flow) -> RequestRecord:
    usage = flow.usage
    outcome = flow.outcome
    if outcome == "ok" and (
        (flow.upstream_status is not None and flow.upstream_status >= 500)
        # A stream that started well and then carried an error, or stopped before its end.
        or (flow.streaming and usage is not None and usage.error)
    ):
        outcome = "upstream_error"
    end = flow.finished_at if flow.finished_at is not None else flow.started
    return RequestRecord(
        time=flow.wall_started,
        request_id=flow.request_id,
        key_id=flow.principal.key_id if flow.principal else flow.claimed_key_id,
        key_name=flow.principal.name if flow.principal else None,
        client=flow.client.ip,
        method=flow.method,
        path=flow.path,
        route=flow.route.name,
        route_class=flow.route.route_class.value,
        model=flow.model,
        status=flow.status,
        upstream_status=flow.upstream_status,
        bytes_in=flow.bytes_in,
        bytes_out=flow.bytes_out,
        duration=end - flow.started,
        ttfb=None if flow.first_byte_at is None else flow.first_byte_at - flow.started,
        overhead=flow.overhead,
        queue_wait=flow.queue_wait,
        forwarded=flow.forwarded_at is not None,
        streamed=flow.streaming,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        tokens_exact=usage.exact if usage else True,
        outcome=outcome,
        upstream=flow.upstream_name if flow.forwarded_at is not None else None,
        failed_over_from=flow.failed_over_from,
        request_body=flow.body,
        auth=flow.auth,
        public_key=flow.public_key,
    )

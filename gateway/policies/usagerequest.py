"""Token counts for /v1 streams whose client did not ask for them: asked for here, on the request,
and hidden again by ``sse.UsageStripper`` on the way back, so limits and accounting see real
counts while the client sees the stream it asked for."""

from __future__ import annotations

from gateway.flow import Flow
from gateway.ollama.bodyfacts import with_member
from gateway.proxy.inbound import Inbound
from gateway.proxy.sse import UsageStripper


class StreamUsagePolicy:
    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        facts, body = flow.json, flow.body
        if facts is None or body is None or not flow.route.asks_usage:
            return
        if facts.stream is not True or facts.asks_usage:
            return
        # Appended: Ollama's decoder keeps the last one, merged into the client's own options.
        flow.body = with_member(body, facts, "stream_options", {"include_usage": True})
        flow.transforms.append(UsageStripper())

    def finish(self, flow: Flow, admitted: None) -> None:
        pass

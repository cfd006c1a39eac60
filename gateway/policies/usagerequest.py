"""Token counts for /v1 streams whose client did not ask for them: asked for here, on the request,
and hidden again by ``sse.UsageStripper`` on the way back, so limits and accounting see real
counts while the client sees the stream it asked for."""

from __future__ import annotations

from gateway.flow import Flow
from gateway.proxy.inbound import Inbound
from gateway.proxy.sse import UsageStripper


class StreamUsagePolicy:
    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        body = flow.json
        if body is None or not flow.route.asks_usage or body.get("stream") is not True:
            return
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return
        merged = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        flow.body = body.replace("stream_options", merged)
        flow.transforms.append(UsageStripper())

    def finish(self, flow: Flow, admitted: None) -> None:
        pass

"""Authorisation: may this key use this route, and this model?

Route classes map to scopes (inference, read, admin). Routes that act with the host owner's
ollama.com identity, and ``:cloud`` models, are refused for every key unless ``allow_cloud`` is set.
Where a route names a model, the name is taken from the body as Ollama will read it (parsed once
by ``RequestBodyPolicy``), normalised, and checked against the key's patterns; listings are
filtered to what the key may use.
"""

from __future__ import annotations

from gateway.errors import BadRequest, Forbidden
from gateway.flow import Flow
from gateway.keys.store import Scope
from gateway.ollama.models import InvalidModelName, ModelName, allowed, parse_model
from gateway.ollama.surfaces import ModelSource, RouteClass
from gateway.policies.listing import ListingFilter, ListingMemo
from gateway.proxy.inbound import Inbound

_SCOPE_FOR = {RouteClass.INFERENCE: Scope.INFERENCE, RouteClass.READ: Scope.READ, RouteClass.ADMIN: Scope.ADMIN}


class RoutePolicy:
    """May this key reach this route at all (its scope; cloud routes only when enabled)?"""

    def __init__(self, *, allow_cloud: bool) -> None:
        self._allow_cloud = allow_cloud

    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        principal = flow.caller()
        route = flow.route
        if route.route_class is RouteClass.CLOUD:
            if not self._allow_cloud:
                raise Forbidden(f"{route.name} acts with the server owner's ollama.com account and is disabled here")
            needed = Scope.ADMIN
        else:
            needed = _SCOPE_FOR[route.route_class]
        if needed not in principal.scopes:
            raise Forbidden(f"this API key lacks the '{needed.value}' scope required for {route.name}")

    def finish(self, flow: Flow, admitted: None) -> None:
        pass


class ModelPolicy:
    """May this key use the model the request names (read from ``flow.json``); listings filtered."""

    def __init__(self, *, allow_cloud: bool) -> None:
        self._allow_cloud = allow_cloud
        self._listings = ListingMemo()

    async def admit(self, flow: Flow, inbound: Inbound) -> None:
        principal = flow.caller()
        route = flow.route
        restricted = bool(principal.patterns) or not self._allow_cloud
        if route.listing and restricted:
            listing = ListingFilter(self._listings, principal.patterns, allow_cloud=self._allow_cloud)
            if flow.method == "HEAD":
                flow.transforms.append(listing)
            else:
                flow.rewrite = listing
        if route.json_body and flow.body is None:
            # The model must come from the body: checking without it would allow any model.
            raise RuntimeError(f"{route.name}: model permissions checked before the body was read")
        if route.model_source is ModelSource.NONE:
            if restricted and route.route_class is RouteClass.INFERENCE:
                # The model travels in a multipart form here; it cannot be checked, so not allowed.
                raise Forbidden(f"{route.name} cannot be checked against model permissions and is disabled here")
            return
        names = self._names(flow)
        if names:
            # Recorded before the checks, so a refusal's log line names the model asked for.
            flow.model = names[0].short
        for name in names:
            if name.is_cloud and not self._allow_cloud:
                raise Forbidden(
                    f"model '{name.short}' runs on the server owner's ollama.com account and is disabled here"
                )
            if not allowed(name, principal.patterns):
                raise Forbidden(f"this API key may not use model '{name.short}'")

    def finish(self, flow: Flow, admitted: None) -> None:
        pass

    def _names(self, flow: Flow) -> list[ModelName]:
        source = flow.route.model_source
        if source is ModelSource.PATH:
            return [_parse(flow.path.rsplit("/", 1)[1])]
        body = flow.json
        if body is None:
            return []
        if source is ModelSource.COPY:
            texts = [body.string("source"), body.string("destination")]
        elif source is ModelSource.CREATE:
            texts = [body.string("model")]
            origin = body.string("from")
            # "from" may also be a file path on the server; only a model name can be checked.
            if origin:
                try:
                    return [_parse(text) for text in texts if text] + [parse_model(origin)]
                except InvalidModelName:
                    pass
        elif source is ModelSource.BODY_OR_NAME:
            texts = [body.string("model"), body.string("name")]
        else:
            texts = [body.string("model")]
        return [_parse(text) for text in texts if text]


def _parse(text: str) -> ModelName:
    try:
        return parse_model(text)
    except InvalidModelName:
        raise BadRequest(f"invalid model name '{text[:200]}'") from None

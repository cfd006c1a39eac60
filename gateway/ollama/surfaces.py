"""The route policy table: the single source of truth for what each forwarded path is.

Every forwarded path gets a class (what a key needs to reach it), a dialect (how the gateway's own
errors look there), body rules, and what the policies need to know of it (the model it names,
whether it streams, how a fleet of servers answers it, ...): adding an Ollama route is one row
here, and no other module names a path. Anything not listed is ADMIN, so a route added by a newer
Ollama is never opened to ordinary keys by accident.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.errors import Dialect


class RouteClass(enum.Enum):
    INFERENCE = "inference"
    READ = "read"
    ADMIN = "admin"
    # Acts with the host owner's ollama.com identity; refused unless a setting enables it.
    CLOUD = "cloud"


class ModelSource(enum.Enum):
    NONE = "none"
    BODY = "body"  # "model" in the JSON body
    BODY_OR_NAME = "body_or_name"  # "model", or the legacy "name" Ollama still reads on these routes
    PATH = "path"  # the last path segment (/v1/models/{model})
    COPY = "copy"  # "source" and "destination"
    CREATE = "create"  # "model" and "from"


class Account(enum.Enum):
    """Ollama's account routes, which the gateway answers for its own keys (``policies/account.py``)."""

    WHO = "who"  # POST /api/me: whose key this is (what `ollama signin` prints)
    SIGN_OUT = "sign_out"  # POST /api/signout: detach the public key that signed it


class Fleetwide(enum.Enum):
    """How a route is answered when several servers stand behind the gateway (one server answers
    every route itself)."""

    ONE = "one"  # by one server: one that has the model, else the least busy; per-server routes: the one named
    EVERY = "every"  # unless a server is named, sent to each; done when done on each (fanout.py)
    WHERE_HELD = "where_held"  # the same, done where held: a server without the model is no failure
    VERSION = "version"  # the lowest version the servers give (listings.py)
    MODELS = "models"  # the union of the servers' {"models": [...]} (listings.py)
    NEWEST_MODELS = "newest_models"  # the same, the most recently modified first
    OPENAI_MODELS = "openai_models"  # the union of {"object": "list", "data": [...]}

    @property
    def merged(self) -> bool:
        """Answered from every server's answer to the same request (a GET)."""
        return self in _MERGED

    @property
    def fanned_out(self) -> bool:
        return self is Fleetwide.EVERY or self is Fleetwide.WHERE_HELD


_MODEL_LISTS = frozenset({Fleetwide.MODELS, Fleetwide.NEWEST_MODELS, Fleetwide.OPENAI_MODELS})
_MERGED = _MODEL_LISTS | {Fleetwide.VERSION}


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # a bounded label for logs and metrics, e.g. "/api/chat"
    route_class: RouteClass
    dialect: Dialect
    model_source: ModelSource = ModelSource.NONE
    bounded_body: bool = True  # False: stream the body with no size cap (model blobs)
    # Answers as an NDJSON stream unless the body says "stream": false (Ollama's native default).
    streams: bool = False
    # Embeddings: no completion tokens to reserve, and Ollama's own words for a model it lacks.
    embedding: bool = False
    # A /v1 stream that carries token counts only when asked (stream_options.include_usage).
    asks_usage: bool = False
    # Model management: the servers it reached are asked for their models again at once.
    changes_models: bool = False
    fleetwide: Fleetwide = Fleetwide.ONE
    account: Account | None = None  # Ollama's account routes: the gateway answers them itself

    @property
    def json_body(self) -> bool:
        """The body is JSON that names the model: read and parsed before the request goes on."""
        return self.model_source not in (ModelSource.NONE, ModelSource.PATH)

    @property
    def listing(self) -> bool:
        """The answer lists models: filtered per key (and merged across servers)."""
        return self.fleetwide in _MODEL_LISTS

    @property
    def per_server(self) -> bool:
        """It acts on one server's own state (its models, its account): with several servers, the
        ``X-Gateway-Upstream`` header names the server."""
        return self.route_class is RouteClass.ADMIN or self.route_class is RouteClass.CLOUD


_N, _O, _A = Dialect.NATIVE, Dialect.OPENAI, Dialect.ANTHROPIC
_INF, _READ, _ADMIN, _CLOUD = RouteClass.INFERENCE, RouteClass.READ, RouteClass.ADMIN, RouteClass.CLOUD
_BODY, _NAMED = ModelSource.BODY, ModelSource.BODY_OR_NAME
_EVERY, _WHERE_HELD = Fleetwide.EVERY, Fleetwide.WHERE_HELD

_EXACT: dict[str, Route] = {
    route.name: route
    for route in (
        Route("/", _READ, _N),
        Route("/api/version", _READ, _N, fleetwide=Fleetwide.VERSION),
        Route("/api/tags", _READ, _N, fleetwide=Fleetwide.NEWEST_MODELS),
        Route("/api/ps", _READ, _N, fleetwide=Fleetwide.MODELS),
        Route("/api/show", _READ, _N, _NAMED),
        Route("/api/generate", _INF, _N, _BODY, streams=True),
        Route("/api/chat", _INF, _N, _BODY, streams=True),
        Route("/api/embed", _INF, _N, _BODY, embedding=True),
        Route("/api/embeddings", _INF, _N, _BODY, embedding=True),
        Route("/api/pull", _ADMIN, _N, _NAMED, streams=True, changes_models=True, fleetwide=_EVERY),
        Route("/api/push", _ADMIN, _N, _NAMED, streams=True),
        Route("/api/create", _ADMIN, _N, ModelSource.CREATE, streams=True, changes_models=True),
        Route("/api/copy", _ADMIN, _N, ModelSource.COPY, changes_models=True),
        Route("/api/delete", _ADMIN, _N, _NAMED, changes_models=True, fleetwide=_WHERE_HELD),
        Route("/api/me", _CLOUD, _N, account=Account.WHO),
        Route("/api/signout", _CLOUD, _N, account=Account.SIGN_OUT),
        Route("/api/experimental/web_search", _CLOUD, _N),
        Route("/api/experimental/web_fetch", _CLOUD, _N),
        Route("/v1/chat/completions", _INF, _O, _BODY, asks_usage=True),
        Route("/v1/completions", _INF, _O, _BODY, asks_usage=True),
        Route("/v1/embeddings", _INF, _O, _BODY, embedding=True),
        Route("/v1/responses", _INF, _O, _BODY),
        Route("/v1/audio/transcriptions", _INF, _O),
        Route("/v1/messages", _INF, _A, _BODY),
        Route("/v1/models", _READ, _O, fleetwide=Fleetwide.OPENAI_MODELS),
    )
}

_PREFIXES: tuple[tuple[str, Route], ...] = (
    ("/api/blobs/", Route("/api/blobs/{digest}", _ADMIN, _N, bounded_body=False)),
    ("/api/user/keys/", Route("/api/user/keys/{key}", _CLOUD, _N)),
    ("/v1/models/", Route("/v1/models/{model}", _READ, _O, ModelSource.PATH)),
)

_OTHER_NATIVE = Route("other", _ADMIN, _N)
_OTHER_OPENAI = Route("other", _ADMIN, _O)
# A path refused before it could be classified: errors in the dialect its prefix promises.
_UNCHECKED_NATIVE = Route("invalid", _ADMIN, _N)
_UNCHECKED_OPENAI = Route("invalid", _ADMIN, _O)


def is_forwarded(path: str) -> bool:
    """Whether ``path`` (decoded) belongs to Ollama rather than to the gateway itself."""
    return path == "/" or path.startswith(("/api/", "/v1/"))


def classify(path: str) -> Route:
    """The route for a forwarded, already validated, decoded ``path``."""
    route = _EXACT.get(path)
    if route is not None:
        return route
    for prefix, prefixed in _PREFIXES:
        if path.startswith(prefix) and len(path) > len(prefix) and "/" not in path[len(prefix) :]:
            return prefixed
    return _OTHER_OPENAI if path.startswith("/v1/") else _OTHER_NATIVE


def unchecked(raw_path: bytes) -> Route:
    """The route of a request whose path is not checked yet (or fails the checks)."""
    return _UNCHECKED_OPENAI if raw_path.startswith(b"/v1/") else _UNCHECKED_NATIVE

"""The route policy table: the single source of truth for what each forwarded path is.

Every forwarded path gets a class (what a key needs to reach it), a dialect (how the gateway's own
errors look there) and body rules. Anything not listed is ADMIN, so a route added by a newer
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


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # a bounded label for logs and metrics, e.g. "/api/chat"
    route_class: RouteClass
    dialect: Dialect
    model_source: ModelSource = ModelSource.NONE
    bounded_body: bool = True  # False: stream the body with no size cap (model blobs)
    listing: bool = False  # the response lists models and is filtered per key
    account: bool = False  # Ollama's account routes: the gateway answers them for its own keys

    @property
    def json_body(self) -> bool:
        """The body is JSON that names the model: read and parsed before the request goes on."""
        return self.model_source not in (ModelSource.NONE, ModelSource.PATH)


_N, _O, _A = Dialect.NATIVE, Dialect.OPENAI, Dialect.ANTHROPIC
_INF, _READ, _ADMIN, _CLOUD = RouteClass.INFERENCE, RouteClass.READ, RouteClass.ADMIN, RouteClass.CLOUD
_BODY, _NAMED = ModelSource.BODY, ModelSource.BODY_OR_NAME

_EXACT: dict[str, Route] = {
    route.name: route
    for route in (
        Route("/", _READ, _N),
        Route("/api/version", _READ, _N),
        Route("/api/tags", _READ, _N, listing=True),
        Route("/api/ps", _READ, _N, listing=True),
        Route("/api/show", _READ, _N, _NAMED),
        Route("/api/generate", _INF, _N, _BODY),
        Route("/api/chat", _INF, _N, _BODY),
        Route("/api/embed", _INF, _N, _BODY),
        Route("/api/embeddings", _INF, _N, _BODY),
        Route("/api/pull", _ADMIN, _N, _NAMED),
        Route("/api/push", _ADMIN, _N, _NAMED),
        Route("/api/create", _ADMIN, _N, ModelSource.CREATE),
        Route("/api/copy", _ADMIN, _N, ModelSource.COPY),
        Route("/api/delete", _ADMIN, _N, _NAMED),
        Route("/api/me", _CLOUD, _N, account=True),
        Route("/api/signout", _CLOUD, _N, account=True),
        Route("/api/experimental/web_search", _CLOUD, _N),
        Route("/api/experimental/web_fetch", _CLOUD, _N),
        Route("/v1/chat/completions", _INF, _O, _BODY),
        Route("/v1/completions", _INF, _O, _BODY),
        Route("/v1/embeddings", _INF, _O, _BODY),
        Route("/v1/responses", _INF, _O, _BODY),
        Route("/v1/audio/transcriptions", _INF, _O),
        Route("/v1/messages", _INF, _A, _BODY),
        Route("/v1/models", _READ, _O, listing=True),
    )
}

_PREFIXES: tuple[tuple[str, Route], ...] = (
    ("/api/blobs/", Route("/api/blobs/{digest}", _ADMIN, _N, bounded_body=False)),
    ("/api/user/keys/", Route("/api/user/keys/{key}", _CLOUD, _N)),
    ("/v1/models/", Route("/v1/models/{model}", _READ, _O, ModelSource.PATH)),
)

_OTHER_NATIVE = Route("other", _ADMIN, _N)
_OTHER_OPENAI = Route("other", _ADMIN, _O)


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

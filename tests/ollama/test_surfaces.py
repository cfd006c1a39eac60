from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import gateway
from gateway.errors import Dialect
from gateway.ollama.surfaces import Fleetwide, ModelSource, RouteClass, classify, is_forwarded, unchecked

INF, READ, ADMIN, CLOUD = RouteClass.INFERENCE, RouteClass.READ, RouteClass.ADMIN, RouteClass.CLOUD


@pytest.mark.parametrize(
    ("path", "route_class", "dialect", "name"),
    [
        ("/", READ, Dialect.NATIVE, "/"),
        ("/api/version", READ, Dialect.NATIVE, "/api/version"),
        ("/api/tags", READ, Dialect.NATIVE, "/api/tags"),
        ("/api/show", READ, Dialect.NATIVE, "/api/show"),
        ("/api/ps", READ, Dialect.NATIVE, "/api/ps"),
        ("/api/generate", INF, Dialect.NATIVE, "/api/generate"),
        ("/api/chat", INF, Dialect.NATIVE, "/api/chat"),
        ("/api/embed", INF, Dialect.NATIVE, "/api/embed"),
        ("/api/embeddings", INF, Dialect.NATIVE, "/api/embeddings"),
        ("/api/pull", ADMIN, Dialect.NATIVE, "/api/pull"),
        ("/api/push", ADMIN, Dialect.NATIVE, "/api/push"),
        ("/api/create", ADMIN, Dialect.NATIVE, "/api/create"),
        ("/api/copy", ADMIN, Dialect.NATIVE, "/api/copy"),
        ("/api/delete", ADMIN, Dialect.NATIVE, "/api/delete"),
        ("/api/blobs/sha256:abc", ADMIN, Dialect.NATIVE, "/api/blobs/{digest}"),
        ("/api/me", CLOUD, Dialect.NATIVE, "/api/me"),
        ("/api/signout", CLOUD, Dialect.NATIVE, "/api/signout"),
        ("/api/user/keys/abc", CLOUD, Dialect.NATIVE, "/api/user/keys/{key}"),
        ("/api/experimental/web_search", CLOUD, Dialect.NATIVE, "/api/experimental/web_search"),
        ("/api/experimental/web_fetch", CLOUD, Dialect.NATIVE, "/api/experimental/web_fetch"),
        ("/api/experimental/model-recommendations", ADMIN, Dialect.NATIVE, "other"),
        ("/api/status", ADMIN, Dialect.NATIVE, "other"),
        ("/api/some-future-route", ADMIN, Dialect.NATIVE, "other"),
        ("/api/tags/", ADMIN, Dialect.NATIVE, "other"),
        ("/v1/chat/completions", INF, Dialect.OPENAI, "/v1/chat/completions"),
        ("/v1/completions", INF, Dialect.OPENAI, "/v1/completions"),
        ("/v1/embeddings", INF, Dialect.OPENAI, "/v1/embeddings"),
        ("/v1/responses", INF, Dialect.OPENAI, "/v1/responses"),
        ("/v1/audio/transcriptions", INF, Dialect.OPENAI, "/v1/audio/transcriptions"),
        ("/v1/messages", INF, Dialect.ANTHROPIC, "/v1/messages"),
        ("/v1/models", READ, Dialect.OPENAI, "/v1/models"),
        ("/v1/models/llama3.2:latest", READ, Dialect.OPENAI, "/v1/models/{model}"),
        ("/v1/models/a/b", ADMIN, Dialect.OPENAI, "other"),
        ("/v1/files", ADMIN, Dialect.OPENAI, "other"),
    ],
)
def test_route_table(path: str, route_class: RouteClass, dialect: Dialect, name: str) -> None:
    route = classify(path)
    assert (route.route_class, route.dialect, route.name) == (route_class, dialect, name)


def test_only_blob_uploads_are_unbounded() -> None:
    assert classify("/api/blobs/sha256:abc").bounded_body is False
    assert classify("/api/chat").bounded_body is True
    assert classify("/api/create").model_source is ModelSource.CREATE
    assert classify("/v1/models/x").model_source is ModelSource.PATH


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [("/", True), ("/api/tags", True), ("/v1/models", True), ("/api", False), ("/v1", False), ("/healthz", False)],
)
def test_forwarded_paths(path: str, forwarded: bool) -> None:
    assert is_forwarded(path) is forwarded


def _facts(path: str) -> set[str]:
    route = classify(path)
    flags = ("streams", "embedding", "asks_usage", "changes_models", "listing", "per_server")
    return {flag for flag in flags if getattr(route, flag)} | {route.fleetwide.value}


@pytest.mark.parametrize(
    ("path", "facts"),
    [
        ("/", {"one"}),
        ("/api/version", {"version"}),
        ("/api/tags", {"listing", "newest_models"}),
        ("/api/ps", {"listing", "models"}),
        ("/v1/models", {"listing", "openai_models"}),
        ("/api/show", {"one"}),
        ("/api/generate", {"streams", "one"}),
        ("/api/chat", {"streams", "one"}),
        ("/api/embed", {"embedding", "one"}),
        ("/api/embeddings", {"embedding", "one"}),
        ("/v1/embeddings", {"embedding", "one"}),
        ("/v1/chat/completions", {"asks_usage", "one"}),
        ("/v1/completions", {"asks_usage", "one"}),
        ("/v1/responses", {"one"}),
        ("/v1/messages", {"one"}),
        ("/api/pull", {"streams", "changes_models", "per_server", "every"}),
        ("/api/delete", {"changes_models", "per_server", "where_held"}),
        ("/api/create", {"streams", "changes_models", "per_server", "one"}),
        ("/api/copy", {"changes_models", "per_server", "one"}),
        ("/api/push", {"streams", "per_server", "one"}),
        ("/api/blobs/sha256:abc", {"per_server", "one"}),
        ("/api/me", {"per_server", "one"}),
        ("/api/some-future-route", {"per_server", "one"}),
        ("/v1/files", {"per_server", "one"}),
    ],
)
def test_what_the_policies_know_of_a_route_is_in_its_row(path: str, facts: set[str]) -> None:
    assert _facts(path) == facts


def test_merged_and_fanned_out_answers() -> None:
    merged = {kind for kind in Fleetwide if kind.merged}
    fanned_out = {kind for kind in Fleetwide if kind.fanned_out}
    assert merged == {Fleetwide.VERSION, Fleetwide.MODELS, Fleetwide.NEWEST_MODELS, Fleetwide.OPENAI_MODELS}
    assert fanned_out == {Fleetwide.EVERY, Fleetwide.WHERE_HELD}


def test_a_path_refused_before_classification_keeps_its_prefix_dialect() -> None:
    assert (unchecked(b"/v1/%2e%2e/x").dialect, unchecked(b"/api/%2e%2e").dialect) == (Dialect.OPENAI, Dialect.NATIVE)
    assert unchecked(b"/v1/x").name == "invalid"


# What the gateway itself asks Ollama (not a forwarded request's facts), and the admin API's own
# paths: the only other modules where such a string may stand.
_OWN_REQUESTS = {
    "fleet/watch.py": {"/api/version", "/api/tags", "/api/ps"},
    "proxy/upstream/__init__.py": {"/api/version"},
    "admin/__init__.py": {"/api", "/api/openapi.json"},
    "admin/audit.py": {"/api/live", "/api/"},
    "admin/gate.py": {"/api/"},
    "admin/hardening.py": {"/api/"},
}


def test_no_module_but_the_route_table_names_an_ollama_path() -> None:
    """Adding an Ollama route is one row in surfaces.py: no set of paths elsewhere to keep in step."""
    package = Path(gateway.__file__).parent
    found: dict[str, set[str]] = {}
    for source in sorted(package.rglob("*.py")):
        relative = source.relative_to(package).as_posix()
        if relative == "ollama/surfaces.py":
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_a_path(node.value):
                found.setdefault(relative, set()).add(node.value)
    assert found == _OWN_REQUESTS


def _names_a_path(text: str) -> bool:
    return re.fullmatch(r"/(api|v1)(/[\w./:{}-]*)?", text) is not None

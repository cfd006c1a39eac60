from __future__ import annotations

import pytest

from gateway.errors import Dialect
from gateway.ollama.surfaces import ModelSource, RouteClass, classify, is_forwarded

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

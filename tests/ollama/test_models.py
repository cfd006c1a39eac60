from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.ollama.jsonbody import JsonBody
from gateway.ollama.models import InvalidModelName, allowed, parse_model, parse_pattern


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("llama3.2", "registry.ollama.ai/library/llama3.2:latest"),
        ("LLAMA3.2:Latest", "registry.ollama.ai/library/llama3.2:latest"),
        ("library/llama3.2", "registry.ollama.ai/library/llama3.2:latest"),
        ("https://registry.ollama.ai/library/llama3.2", "registry.ollama.ai/library/llama3.2:latest"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M", "hf.co/bartowski/llama-3.2-1b-gguf:q4_k_m"),
        ("localhost:5000/team/model:v1", "localhost:5000/team/model:v1"),
    ],
)
def test_names_normalise_like_ollama(name: str, normalised: str) -> None:
    assert str(parse_model(name)) == normalised


@pytest.mark.parametrize("name", ["", "llama3.2:", ":latest", "/x", "a//b", "x y", "../x", "a/b/c/d", "https://x", "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidModelName):
        parse_model(name)


@pytest.mark.parametrize(
    ("name", "cloud"),
    [("gpt-oss:120b-cloud", True), ("qwen3-coder:cloud", True), ("x-cloud", True), ("x:cloudy", False)],
)
def test_cloud_names(name: str, cloud: bool) -> None:
    assert parse_model(name).is_cloud is cloud


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("llama3.2", "llama3.2:latest", True),
        ("llama3.2", "llama3.2:70b", False),
        ("llama3.2:*", "llama3.2:70b", True),
        ("qwen*", "qwen3:8b", True),
        ("qwen*", "library/qwen2.5", True),
        ("qwen*", "hf.co/x/qwen3", False),
        ("hf.co/*/*", "hf.co/x/qwen3:q4", True),
        ("*", "hf.co/x/y:z", True),
    ],
)
def test_patterns(pattern: str, name: str, matches: bool) -> None:
    assert allowed(parse_model(name), (parse_pattern(pattern),)) is matches


def test_no_patterns_allow_everything() -> None:
    assert allowed(parse_model("anything"), ())


def test_body_fields_are_read_the_way_go_reads_them() -> None:
    body = JsonBody.parse(b'{"model":"a","Model":"b","MODEL":null,"\\u017fource":"s","\\u212aeep_alive":1}')
    assert body.string("model") == "b"
    assert body.get("source") == "s"
    assert body.get("keep_alive") == 1
    assert list(body.values("model")) == ["a", "b"]
    with pytest.raises(BadRequest):
        JsonBody.parse(b'{"model": ["a"]}').string("model")
    with pytest.raises(BadRequest):
        JsonBody.parse(b"   ")


def test_replace_writes_each_field_once_with_the_value_go_kept() -> None:
    body = JsonBody.parse(b'{"Stream":false,"model":"a","MODEL":"b","model":null,"stream":true}')
    rewritten = JsonBody.parse(body.replace("stream_options", {"include_usage": True}))
    assert rewritten.pairs == [("stream", True), ("model", "b"), ("stream_options", {"include_usage": True})]

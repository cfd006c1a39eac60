from __future__ import annotations

import pytest

from gateway.errors import BadRequest
from gateway.ollama.bodyfacts import BodyFacts, with_member
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


def test_a_member_is_appended_and_every_spelling_the_client_sent_stays_as_it_came() -> None:
    raw = b'{"Stream":false,"model":"a","MODEL":"b","model":null,"stream":true,"Stream_Options":5}  \n'
    rewritten = with_member(raw, BodyFacts.read(raw), "stream_options", {"include_usage": True, "x": "\ud800"})
    assert rewritten == raw.rstrip()[:-1] + b',"stream_options":{"include_usage":true,"x":"\\ud800"}}  \n'
    # Go keeps the last spelling of each field: the appended one, and the client's model "b".
    body = JsonBody.parse(rewritten)
    assert (body.get("stream_options"), body.string("model"), body.get("stream")) == (
        {"include_usage": True, "x": "\ud800"},
        "b",
        True,
    )
    assert with_member(b"{ }", BodyFacts.read(b"{ }"), "a", 1) == b'{ "a":1}'


def test_body_facts_keep_what_the_policies_read_and_nothing_large() -> None:
    raw = b'{"model":"m","Name":7,"stream":"yes","stream_options":{"include_usage":true},"from":"%s",' % (
        b"x" * 5000
    ) + b'"prompt":"%s","max_tokens":9,"ignored":[1,2,3]}' % (b"p" * 400)
    facts = BodyFacts.read(raw)
    assert (facts.string("model"), facts.stream, facts.asks_usage, facts.prompt_tokens, facts.completion_cap) == (
        "m",
        None,
        True,
        101,
        9,
    )
    assert facts.string("from") == "x" * 1024  # longer than any model name: invalid all the same
    with pytest.raises(BadRequest, match="'name' must be a string"):
        facts.string("name")
    with pytest.raises(KeyError):
        facts.string("keep_alive")


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("acme/custom-model:latest", "acme/custom-model:latest"),
        ("registry.ollama.ai/acme/x:1", "acme/x:1"),
        ("example.com:5000/team/m:v2", "example.com:5000/team/m:v2"),
    ],
)
def test_the_shortest_spelling_is_ollamas(name: str, short: str) -> None:
    assert parse_model(name).short == short

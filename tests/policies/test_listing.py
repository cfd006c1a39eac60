"""Listings at 1,000 models, on real sockets: what needs no filtering is upstream's bytes, what
does is filtered exactly, and a listing that changes is filtered afresh."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from bench.listingcost import GLOBS, model_names
from gateway.ollama.models import parse_pattern
from gateway.policies import listing
from tests.conftest import Fleetside, gateway_settings, issue_key
from tests.fake_ollama import FakeOllama, catalog
from tests.servers import RunningGateway, gateway_thread

pytestmark = pytest.mark.timeout(60)

COUNT = 1000


def under_globs(name: str) -> bool:
    """GLOBS, spelled out by hand: the test's own account of what they let through."""
    assert GLOBS == ("m00*", "acme/*", "hf.co/*/*", "llama3.2:*", "m09*")
    return (
        name.startswith(("m00", "m09"))
        or name.startswith("acme/")
        or name.startswith("hf.co/")
        or name.startswith("llama3.2:")
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOllama]:
    with FakeOllama(model_names(COUNT, cloud=True)) as fake:
        fake.load("m0000")
        fake.load("acme/custom-0001:q4_k_m")
        fake.load("family7-0007:2b")
        yield fake


@pytest.fixture(scope="module")
def sides(upstream: FakeOllama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningGateway]]:
    """A key with no globs through a gateway as configured by default (cloud models hidden) and
    through one that allows them; a key with five globs through the first."""
    database_url = f"sqlite:///{tmp_path_factory.mktemp('listing') / 'gateway.db'}"
    everything = issue_key(database_url, "everything")
    globbed = issue_key(database_url, "five-globs", models=GLOBS)
    with ExitStack() as stack:
        running = {}
        for name, allow_cloud in (("default", False), ("cloud", True)):
            settings = gateway_settings(upstream_url=upstream.url, database_url=database_url, allow_cloud=allow_cloud)
            running[name] = stack.enter_context(gateway_thread(settings))
            running[name].key = everything
        first = running["default"]
        running["globs"] = RunningGateway(first.url, first.app, first.server, globbed)
        yield running


def _direct(upstream: FakeOllama, path: str) -> httpx.Response:
    return httpx.get(upstream.url + path, timeout=10)


@pytest.mark.parametrize("path", ["/api/tags", "/api/ps", "/v1/models"])
def test_an_unrestricted_listing_is_upstreams_bytes(
    upstream: FakeOllama, sides: dict[str, RunningGateway], path: str
) -> None:
    # Where cloud models are allowed, nothing is filtered: upstream's answer, framing and all.
    direct = _direct(upstream, path)
    side = sides["cloud"]
    answer = httpx.get(side.url + path, headers=side.auth, timeout=10)
    assert (answer.status_code, answer.content) == (200, direct.content)
    assert answer.headers.get("content-length") == direct.headers.get("content-length")
    assert answer.headers["content-type"] == direct.headers["content-type"]
    if path != "/api/ps":
        assert len(json.loads(direct.content)["models" if path == "/api/tags" else "data"]) == COUNT


@pytest.mark.parametrize("path", ["/api/tags", "/api/ps", "/v1/models"])
def test_a_listing_with_nothing_to_hide_is_upstreams_bytes_with_its_exact_length(
    upstream: FakeOllama, sides: dict[str, RunningGateway], path: str
) -> None:
    # Cloud models hidden (the default), and none listed: nothing to remove, upstream's bytes,
    # sent with their length even where upstream sent them chunked (Go does past 4 KB).
    upstream.models = [name for name in model_names(COUNT, cloud=True) if "cloud" not in name.lower()]
    try:
        direct = _direct(upstream, path)
        side = sides["default"]
        answer = httpx.get(side.url + path, headers=side.auth, timeout=10)
    finally:
        upstream.models = model_names(COUNT, cloud=True)
    assert (answer.status_code, answer.content) == (200, direct.content)
    assert answer.headers["content-type"] == direct.headers["content-type"]
    assert answer.headers["content-length"] == str(len(direct.content))


def test_cloud_models_are_left_out_where_not_allowed_and_the_rest_kept_as_upstream_wrote_them(
    upstream: FakeOllama, sides: dict[str, RunningGateway]
) -> None:
    entries = _direct(upstream, "/api/tags").json()["models"]
    side = sides["default"]
    answer = httpx.get(side.url + "/api/tags", headers=side.auth, timeout=10)
    kept = answer.json()["models"]
    assert [entry["name"] for entry in entries if "cloud" in entry["name"].lower()] == [
        f"remote-{index:04d}:Cloud" if index % 200 == 3 else f"big-{index:04d}:120b-cloud"
        for index in range(3, COUNT, 100)
    ]
    assert kept == [entry for entry in entries if "cloud" not in entry["name"].lower()]
    assert len(kept) == COUNT - 10
    assert answer.headers["content-length"] == str(len(answer.content))


@pytest.mark.parametrize("path", ["/api/tags", "/v1/models"])
def test_a_listing_is_filtered_exactly_by_five_globs(
    upstream: FakeOllama, sides: dict[str, RunningGateway], path: str
) -> None:
    field, name_key = ("models", "name") if path == "/api/tags" else ("data", "id")
    direct = _direct(upstream, path).json()
    side = sides["globs"]
    answer = httpx.get(side.url + path, headers=side.auth, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-length"] == str(len(answer.content))
    filtered = answer.json()
    expected = [entry for entry in direct[field] if under_globs(entry[name_key])]
    assert filtered[field] == expected
    # 25 + 25 of m00*/m09*, 250 acme/, 250 hf.co/: every one of them, in upstream's order.
    assert len(expected) == 550
    if path == "/v1/models":
        assert list(filtered) == ["object", "data"]
        assert filtered["object"] == "list"
        assert set(expected[0]) == {"id", "object", "created", "owned_by"}


def test_a_changed_listing_is_filtered_afresh_and_each_key_sees_its_own(
    upstream: FakeOllama, sides: dict[str, RunningGateway]
) -> None:
    side, everything = sides["globs"], sides["default"]

    def names(who: RunningGateway) -> list[str]:
        return [
            entry["name"] for entry in httpx.get(who.url + "/api/tags", headers=who.auth, timeout=10).json()["models"]
        ]

    before = names(side)
    assert len(before) == 550
    upstream.models = ["acme/new:latest", "m0999:latest", "qwen3:latest", "llama3.2:1b", "x-cloud:latest"]
    try:
        # Newest first: the fake installs them a minute apart, in this order.
        assert names(side) == ["acme/new:latest", "m0999:latest", "llama3.2:1b"]
        assert names(everything) == ["acme/new:latest", "m0999:latest", "qwen3:latest", "llama3.2:1b"]
    finally:
        upstream.models = model_names(COUNT, cloud=True)
    assert names(side) == before


def test_an_error_answer_is_relayed_as_upstream_wrote_it(
    upstream: FakeOllama, sides: dict[str, RunningGateway]
) -> None:
    upstream.configure(status=500, error="listing failed", paths=frozenset({"/api/tags"}))
    try:
        direct = _direct(upstream, "/api/tags")
        side = sides["globs"]
        answer = httpx.get(side.url + "/api/tags", headers=side.auth, timeout=10)
    finally:
        upstream.configure(status=None, error=None, paths=None)
    assert (answer.status_code, answer.content) == (500, direct.content)
    assert answer.content == b'{"error":"listing failed"}'


def test_head_gives_away_no_length_of_what_the_key_may_not_see(
    upstream: FakeOllama, sides: dict[str, RunningGateway]
) -> None:
    side = sides["globs"]
    answer = httpx.head(side.url + "/api/tags", headers=side.auth, timeout=10)
    assert answer.status_code == 200
    assert answer.content == b""
    assert "content-length" not in answer.headers


def test_a_listing_goes_out_as_upstream_escaped_it(
    upstream: FakeOllama, sides: dict[str, RunningGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Go's encoder writes "<", ">" and "&" as \u003c, \u003e, \u0026: parsing and writing the
    # listing again would change its bytes, relaying it does not.
    monkeypatch.setitem(catalog._PROFILES, "odd", ("llama <3> & co", "1B", "Q4_0", ("completion",)))
    upstream.models = ["odd:latest", *model_names(COUNT - 1)]
    try:
        direct = _direct(upstream, "/api/tags")
        side = sides["default"]
        answer = httpx.get(side.url + "/api/tags", headers=side.auth, timeout=10)
    finally:
        upstream.models = model_names(COUNT, cloud=True)
    assert b'"family":"llama \\u003c3\\u003e \\u0026 co"' in direct.content
    assert (answer.status_code, answer.content) == (200, direct.content)


def test_a_fleets_merged_listing_at_1000_models(make_fleet: Callable[..., Fleetside], tmp_path: Path) -> None:
    names = model_names(2 * COUNT)
    # Overlapping halves: b lists a's newer half again, and 500 of its own.
    side = make_fleet({"a": names[:COUNT], "b": names[COUNT // 2 : COUNT + COUNT // 2], "c": names[COUNT:]})
    direct = {name: httpx.get(fake.url + "/api/tags", timeout=10).json()["models"] for name, fake in side.fakes.items()}
    first: dict[str, dict[str, object]] = {}
    for server in ("a", "b", "c"):
        for entry in direct[server]:
            first.setdefault(entry["name"], entry)
    # One entry per name, the first server's, the most recently modified first (ties in order).
    expected = sorted(first.values(), key=lambda entry: str(entry["modified_at"]), reverse=True)
    assert len(expected) == 2 * COUNT
    url = side.gateway.url
    merged = httpx.get(url + "/api/tags", headers=side.auth(), timeout=10)
    assert merged.json() == {"models": expected}
    globbed = issue_key(f"sqlite:///{tmp_path / 'gateway.db'}", "five-globs", models=GLOBS)
    tags = httpx.get(url + "/api/tags", headers=side.auth(globbed), timeout=10).json()
    assert tags == {"models": [entry for entry in expected if under_globs(str(entry["name"]))]}
    models = httpx.get(url + "/v1/models", headers=side.auth(globbed), timeout=10).json()
    assert models["object"] == "list"
    assert sorted(entry["id"] for entry in models["data"]) == sorted(
        str(entry["name"]) for entry in expected if under_globs(str(entry["name"]))
    )
    assert merged.headers["content-length"] == str(len(merged.content))
    # One server's listing changes: the merge is made again, not remembered.
    side.fakes["c"].models = ["zz-new:latest"]
    again = httpx.get(url + "/api/tags", headers=side.auth(), timeout=10).json()["models"]
    assert {entry["name"] for entry in again} == {*names[: COUNT + COUNT // 2], "zz-new:latest"}
    assert len(again) == COUNT + COUNT // 2 + 1


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The listings the memo filters afresh (rather than answers from memory), in order."""
    calls: list[bytes] = []
    work = listing.filtered

    def filtered(raw: bytes, sight: listing.Sight) -> bytes:
        calls.append(raw)
        return work(raw, sight)

    monkeypatch.setattr(listing, "filtered", filtered)
    return calls


def _tags(*names: str) -> bytes:
    entries = [{"name": name, "model": name} for name in names]
    return json.dumps({"models": entries}, separators=(",", ":")).encode()


def test_the_memo_answers_an_unchanged_listing_and_forgets_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counted(monkeypatch)
    memo = listing.ListingMemo(listings=2)
    only_a = ((parse_pattern("a*"),), False)
    first, second, third = _tags("a1", "b1"), _tags("a2", "b2"), _tags("a3", "b3")
    assert memo.filtered(first, only_a) == _tags("a1")
    # Equal bytes in another object: the same listing.
    assert memo.filtered(bytes(bytearray(first)), only_a) == _tags("a1")
    assert memo.filtered(first, ((), True)) is first
    assert calls == [first, first]
    memo.filtered(second, only_a)
    memo.filtered(third, only_a)
    assert memo.filtered(third, only_a) == _tags("a3")
    assert calls == [first, first, second, third]
    # Two listings at most: the first was dropped, and is filtered afresh.
    assert memo.filtered(first, only_a) == _tags("a1")
    assert calls == [first, first, second, third, first]


def test_the_memo_holds_no_more_bytes_than_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counted(monkeypatch)
    big = [_tags(*(f"a{index}-{n}" for n in range(40)), "b") for index in range(2)]
    memo = listing.ListingMemo(budget=len(big[0]) * 2, listings=8)
    only_a = ((parse_pattern("a*"),), False)
    for raw in (*big, big[1], big[0]):
        memo.filtered(raw, only_a)
    # Each listing and its filtered copy fill the budget: the second pushed the first out.
    assert calls == [big[0], big[1], big[0]]

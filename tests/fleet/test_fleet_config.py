"""Naming several Ollama servers: the list and file formats, the errors that stop start-up, what
the gateway says at start-up, and ``ollama-gateway upstreams``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.fleet.config import FleetConfigError, MemberSpec, fleet_specs, parse_list
from tests.conftest import issue_key
from tests.fake_ollama import FakeOllama
from tests.servers import ROOT, free_port, gateway_process

pytestmark = pytest.mark.timeout(30)


def test_one_url_is_a_fleet_of_one_named_by_its_address() -> None:
    assert fleet_specs("http://10.0.0.5:11434", "", None) == (MemberSpec("10.0.0.5:11434", "http://10.0.0.5:11434"),)


def test_the_list_format() -> None:
    assert parse_list(
        " gpu-a=http://10.0.0.5:11434;max_concurrency=4;weight=2 , http://[fd00::6]:11434/ ,"
        "cpu.1=https://ollama.internal/prefix;max_concurrency=0"
    ) == (
        MemberSpec("gpu-a", "http://10.0.0.5:11434", weight=2, max_concurrency=4),
        MemberSpec("[fd00::6]:11434", "http://[fd00::6]:11434"),
        MemberSpec("cpu.1", "https://ollama.internal/prefix", max_concurrency=0),
    )


def test_spaces_and_a_trailing_semicolon_are_forgiven() -> None:
    assert parse_list(" a = http://x:1 ; weight = 2 ; , b=http://y:2;") == (
        MemberSpec("a", "http://x:1", weight=2),
        MemberSpec("b", "http://y:2"),
    )


def test_the_file_format(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(
        '[[upstream]]\nname = "gpu-a"\nurl = "http://10.0.0.5:11434"\nmax_concurrency = 4\n\n'
        '[[upstream]]\nurl = "http://10.0.0.6:11434"\nweight = 3\n'
    )
    assert fleet_specs("http://ignored:1", "", str(path)) == (
        MemberSpec("gpu-a", "http://10.0.0.5:11434", max_concurrency=4),
        MemberSpec("10.0.0.6:11434", "http://10.0.0.6:11434", weight=3),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "a=ftp://x",
            "server 1: 'ftp://x' must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:11434",
        ),
        ("a=http://u:p@x", "server 1: 'http://u:p@x' must not carry a query, fragment or credentials"),
        ("a=http://x:99999", "server 1: 'http://x:99999' has an invalid port"),
        ("a=http://x,a=http://y", "the name 'a' is used twice (give each server its own: name=URL)"),
        ("http://x/one,http://x/two", "the name 'x:80' is used twice (give each server its own: name=URL)"),
        ("a b=http://x", "server 1: name 'a b' must be letters, digits, '.', '_' or '-' (at most 63)"),
        ("a=http://x;weight=0", "server 1: weight must be a whole number from 1"),
        ("a=http://x;weight=heavy", "server 1: weight must be a whole number from 1"),
        ("a=http://x;weight=²", "server 1: weight must be a whole number from 1"),
        ("a=http://x;colour=red", "server 1: unknown option 'colour' (known: name, url, weight, max_concurrency)"),
        ("a=http://x;weight", "'weight': options are key=value (weight, max_concurrency)"),
        (" , ", "lists no server"),
    ],
)
def test_bad_lists_say_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(FleetConfigError) as caught:
        fleet_specs("http://127.0.0.1:11434", value, None)
    assert str(caught.value) == f"GATEWAY_UPSTREAMS: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[upstream]]\nname = 'a'\n", "server 1: no url"),
        ("[[upstream]]\nurl = 'http://x'\nmax_concurrency = -1\n", "server 1: max_concurrency must be a whole number"),
        ("[[upstream]]\nurl = 'http://x'\nweight = true\n", "server 1: weight must be a whole number"),
        ("[upstream]\nurl = 'http://x'\n", "expected one [[upstream]] table per server"),
        ("[[servers]]\nurl = 'http://x'\n", "unknown key 'servers' (expected [[upstream]] tables)"),
        ("[[upstream]\n", "is not valid TOML"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(text)
    with pytest.raises(FleetConfigError) as caught:
        fleet_specs("http://127.0.0.1:11434", "", str(path))
    assert str(caught.value).startswith("GATEWAY_UPSTREAMS_FILE: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("env", "start"),
    [
        ({"GATEWAY_UPSTREAMS": "a=http://x,a=http://y"}, "GATEWAY_UPSTREAMS: Value error, the name 'a' is used twice"),
        ({"GATEWAY_UPSTREAMS_FILE": "/nonexistent/upstreams.toml"}, "GATEWAY_UPSTREAMS_FILE: cannot read"),
        (
            {"GATEWAY_UPSTREAMS": "http://x", "GATEWAY_UPSTREAMS_FILE": "/etc/u.toml"},
            "GATEWAY_UPSTREAMS_FILE: Value error, set GATEWAY_UPSTREAMS or GATEWAY_UPSTREAMS_FILE, not both",
        ),
        ({"GATEWAY_UPSTREAM_REFRESH_INTERVAL": "0"}, "GATEWAY_UPSTREAM_REFRESH_INTERVAL: Input should be greater"),
        # Several workers each read the list: it is checked once, before any starts.
        (
            {
                "GATEWAY_UPSTREAMS_FILE": "/nonexistent/upstreams.toml",
                "GATEWAY_WORKERS": "2",
                "GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0",
            },
            "GATEWAY_UPSTREAMS_FILE: cannot read",
        ),
    ],
)
def test_a_bad_fleet_stops_start_up_with_one_line(env: dict[str, str], start: str) -> None:
    result = _command(["serve"], env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"ollama-gateway: invalid configuration: {start}")


def test_start_up_names_every_server_and_the_list_replaces_the_one_url(database_url: str) -> None:
    issue_key(database_url, "someone")
    absent = free_port()
    with FakeOllama(["llama3.2"]) as fake:
        a = fake.url
        env = {
            # The image always sets the one URL; a list replaces it.
            "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}",
            "GATEWAY_UPSTREAMS": f"a={a},b=http://127.0.0.1:{absent}",
            "GATEWAY_DATABASE_URL": database_url,
        }
        with gateway_process(env) as gateway:
            lines = [gateway.stderr.wait_for(f"forwarding to {name} (") for name in ("a", "b")]
            ready = httpx.get(gateway.url + "/readyz")
            gateway.stop()
    assert lines[0].startswith("INFO:")
    assert lines[0].rstrip().endswith(f"forwarding to a ({a}): Ollama 0.33.0 answered")
    assert lines[1].startswith("WARNING:")
    assert (
        lines[1]
        .rstrip()
        .endswith(
            f"forwarding to b (http://127.0.0.1:{absent}) (GATEWAY_UPSTREAMS), which does not answer "
            f"(upstream 127.0.0.1:{absent} unavailable: Connection refused): requests get 502"
        )
    )
    assert ready.status_code == 200
    assert ready.json()["upstreams"]["b"] == {"state": "down", "in_flight": 0, "queued": 0}


def test_the_upstreams_command_shows_the_fleet(database_url: str) -> None:
    absent = free_port()
    with FakeOllama(["llama3.2", "qwen3"]) as a, FakeOllama(["qwen3"], version="0.30.0") as b:
        a.load("qwen3")
        env = {
            "GATEWAY_UPSTREAMS": f"a={a.url},b={b.url};max_concurrency=2,c=http://127.0.0.1:{absent}",
            "GATEWAY_DATABASE_URL": database_url,
        }
        with gateway_process(env) as gateway:
            shown = _command(["upstreams", "--gateway", gateway.url], env)
            as_json = _command(["upstreams", "--json", "--gateway", gateway.url], env)
        alone = _command(["upstreams", "--gateway", f"http://127.0.0.1:{free_port()}"], env)
    assert shown.returncode == 0
    rows = [line.split() for line in shown.stdout.splitlines()]
    assert rows[0] == ["NAME", "STATE", "VERSION", "IN", "FLIGHT", "QUEUED", "MODELS", "LOADED"]
    assert rows[1] == ["a", "up", "0.33.0", "0", "0", "llama3.2:latest,", "qwen3:latest", "qwen3:latest"]
    assert rows[2] == ["b", "up", "0.30.0", "0", "0", "qwen3:latest", "-"]
    assert rows[3][:2] == ["c", "down"]
    assert shown.stderr == ""
    parsed = json.loads(as_json.stdout)
    assert [row["name"] for row in parsed] == ["a", "b", "c"]
    assert parsed[2]["reason"] == f"upstream 127.0.0.1:{absent} unavailable: Connection refused"
    assert parsed[0]["in_flight"] == 0
    # Without a running gateway the servers are still shown, and the missing columns explained.
    assert alone.returncode == 0
    shown_alone = [line.split()[:5] for line in alone.stdout.splitlines()[1:3]]
    assert shown_alone == [["a", "up", "0.33.0", "-", "-"], ["b", "up", "0.30.0", "-", "-"]]
    assert "did not answer /readyz" in alone.stderr


def _command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

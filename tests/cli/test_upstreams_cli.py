"""``ollama-gateway upstreams``: each server as it answers, its models named as Ollama lists them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import issue_key
from tests.fake_ollama import Behaviour, FakeOllama
from tests.servers import free_port, gateway_process

pytestmark = pytest.mark.timeout(60)


def test_models_are_named_as_ollama_lists_them(tmp_path: Path) -> None:
    with FakeOllama(["acme/custom-model:latest", "llama3.2"]) as fake:
        env = {
            **{name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")},
            "GATEWAY_UPSTREAM_URL": fake.url,
        }
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "upstreams", "--json", "--gateway", f"http://127.0.0.1:{free_port()}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert (row["state"], row["models"]) == ("up", ["acme/custom-model:latest", "llama3.2:latest"])


def test_one_server_shows_what_the_gateway_has_in_flight(database_url: str) -> None:
    with FakeOllama(["llama3.2"]) as fake:
        fake.behaviour = Behaviour(hang=True, paths=frozenset({"/api/chat"}))
        env = {"GATEWAY_UPSTREAM_URL": fake.url, "GATEWAY_DATABASE_URL": database_url}
        key = issue_key(database_url, "alice")
        with gateway_process(env) as gateway:
            body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
            held = socket.create_connection(("127.0.0.1", urlsplit(gateway.url).port or 80), timeout=30)
            with held:
                held.sendall(
                    f"POST /api/chat HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
                )
                fake.wait_for_request()
                shown = _upstreams(env, gateway.url)
    assert shown.returncode == 0, shown.stderr
    [row] = json.loads(shown.stdout)
    assert (row["state"], row["in_flight"], row["queued"]) == ("up", 1, 0)
    assert shown.stderr == ""


def _upstreams(env: dict[str, str], gateway: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "upstreams", "--json", "--gateway", gateway],
        env={**{name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )

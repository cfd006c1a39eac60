"""``ollama-gateway upstreams``: each server as it answers, its models named as Ollama lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_ollama import FakeOllama
from tests.servers import free_port

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

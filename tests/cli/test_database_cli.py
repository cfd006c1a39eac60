"""Every command names the database it uses; only ``keys create`` may make a new one, and says so.

Run as an operator would, from a folder of its own with the default (relative) database URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    "args",
    [("keys", "list"), ("keys", "show", "alice"), ("keys", "revoke", "alice"), ("keys", "rotate", "alice"), ("usage",)],
)
def test_a_command_elsewhere_refuses_to_make_an_empty_database(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _cli(tmp_path, *args)
    path = tmp_path.resolve() / "gateway.db"
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"ollama-gateway: error: no database at {path} (GATEWAY_DATABASE_URL=sqlite:///./gateway.db): run the "
        "command from the folder the gateway runs in, or set GATEWAY_DATABASE_URL to its database\n"
    )
    assert sorted(os.listdir(tmp_path)) == []


def test_keys_create_says_it_made_a_new_database_and_later_commands_name_it(tmp_path: Path) -> None:
    path = tmp_path.resolve() / "gateway.db"
    created = _cli(tmp_path, "keys", "create", "alice")
    assert created.returncode == 0
    assert created.stderr.splitlines()[0] == f"ollama-gateway: created a new database at {path}"
    again = _cli(tmp_path, "keys", "create", "bob")
    assert again.stderr.splitlines()[0] == f"ollama-gateway: database {path}"
    listed = _cli(tmp_path, "keys", "list")
    assert (listed.returncode, listed.stderr) == (0, f"ollama-gateway: database {path}\n")
    usage = _cli(tmp_path, "usage")
    assert (usage.returncode, usage.stderr) == (0, f"ollama-gateway: database {path}\n")

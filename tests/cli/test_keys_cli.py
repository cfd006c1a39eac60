"""``ollama-gateway keys``: every option explained with an example, expiry and last use listed,
"all models" shown one way."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import build_parser

pytestmark = pytest.mark.timeout(60)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(item for item in parser._actions if isinstance(item, argparse._SubParsersAction))
    return dict(action.choices)


KEYS = _subcommands(_subcommands(build_parser())["keys"])


@pytest.mark.parametrize("command", sorted(KEYS))
def test_every_keys_option_has_help_with_an_example(command: str) -> None:
    parser = KEYS[command]
    unexplained = [
        action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and "e.g." not in (action.help or "")
    ]
    assert unexplained == []
    assert (parser.epilog or "").startswith(("examples:\n  ollama-gateway keys ", "example:\n  ollama-gateway keys "))


def test_the_expiry_units_are_spelt_out() -> None:
    assert "m (minutes: 1m is one minute)" in (KEYS["create"]._option_string_actions["--expires"].help or "")


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=30
    )


def test_list_shows_expiry_and_all_models_reads_the_same_in_list_and_show(tmp_path: Path) -> None:
    assert _cli(tmp_path, "keys", "create", "alice", "--expires", "2030-01-02").returncode == 0
    assert _cli(tmp_path, "keys", "create", "bob", "--model", "qwen3").returncode == 0
    listing = _cli(tmp_path, "keys", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "ID", "STATUS", "SCOPES", "MODELS", "EXPIRES", "LAST", "USED"]
    alice = listing[1].split()
    bob = listing[2].split()
    assert (alice[0], alice[4:]) == ("alice", ["*", "2030-01-02T00:00:00Z", "-"])
    assert (bob[0], bob[4:]) == ("bob", ["qwen3", "never", "-"])
    shown = _cli(tmp_path, "keys", "show", "alice").stdout.splitlines()
    assert "models:       *" in shown
    assert "expires_at:   2030-01-02T00:00:00Z" in shown
    assert "expires_at:   never" in _cli(tmp_path, "keys", "show", "bob").stdout.splitlines()


def test_list_finds_keys_as_the_admin_page_does(tmp_path: Path) -> None:
    for args in (("team-a", "--model", "qwen3"), ("team-b",), ("other", "--model", "qwen3")):
        assert _cli(tmp_path, "keys", "create", *args).returncode == 0
    assert _cli(tmp_path, "keys", "revoke", "team-b").returncode == 0

    def names(*args: str) -> list[str]:
        done = _cli(tmp_path, "keys", "list", *args)
        assert done.returncode == 0, done.stderr
        return [line.split()[0] for line in done.stdout.splitlines()[1:]]

    assert names("--find", "TEAM") == ["team-a", "team-b"]
    assert names("--find", "qwen3 team") == ["team-a"]
    assert names("--status", "revoked") == ["team-b"]
    assert names("--find", "team", "--status", "active") == ["team-a"]
    refused = _cli(tmp_path, "keys", "list", "--find", " ".join(f"w{n}" for n in range(9)))
    assert refused.returncode == 2
    assert "argument --find: at most 8 different words" in refused.stderr

"""``ollama-gateway config``: the effective settings, where each came from, secrets masked; and
the warnings for ``GATEWAY_*`` names no setting reads (shown by ``serve`` at start-up too).

Reads the environment and ``.env`` in the working directory, as ``Settings`` does."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.settings import Settings, masked, unknown_variables, variable

ENV_FILE = ".env"


def dotenv_names(path: Path = Path(ENV_FILE)) -> list[str]:
    """The names a ``.env`` file sets (``NAME=value`` lines, ``export`` allowed, ``#`` comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    names = []
    for line in text.splitlines():
        line = line.strip().removeprefix("export ").strip()
        if line and not line.startswith("#") and "=" in line:
            names.append(line.partition("=")[0].strip())
    return names


def setting_warnings() -> list[str]:
    return unknown_variables({"the environment": list(os.environ), ENV_FILE: dotenv_names()})


def add_commands(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="print the effective settings and where each came from",
        description="Each setting's variable, value (passwords in URLs masked) and source: the "
        "environment (env), the .env file in this folder (.env) or the default.",
    )
    config.set_defaults(handler=_show)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    environment = {name.upper() for name in os.environ}
    dotenv = {name.upper() for name in dotenv_names()}
    rows = []
    for field in Settings.model_fields:
        name = variable(field)
        source = "env" if name in environment else ".env" if name in dotenv else "default"
        rows.append((name, masked(getattr(settings, field)), source))
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {source:<7}  {value or '-'}")
    for line in setting_warnings():
        print(f"ollama-gateway: warning: {line}", file=sys.stderr)
    return 0

"""The command line: ``ollama-gateway serve | keys … | usage | upstreams | config | db copy``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from gateway import __version__
from gateway.cli import config, db, keys, upstreams, usage
from gateway.cli.where import NoDatabase
from gateway.database.sqlite import DatabaseError, DatabaseUnusable
from gateway.errors import DatabaseFailed
from gateway.fleet.config import FleetConfigError
from gateway.keys.store import KeyStoreError
from gateway.settings import Settings, describe_error


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.runtime.server import serve

    overrides = {name: value for name in ("host", "port") if (value := getattr(args, name)) is not None}
    return serve(settings.model_copy(update=overrides) if overrides else settings, warnings=config.setting_warnings())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama-gateway", description="An authenticating gateway in front of Ollama.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="listen address (GATEWAY_HOST)")
    serve.add_argument("--port", type=int, help="listen port (GATEWAY_PORT)")
    serve.set_defaults(handler=_serve)

    keys.add_commands(commands)
    usage.add_commands(commands)
    upstreams.add_commands(commands)
    config.add_commands(commands)
    db.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
        result: int = args.handler(args, settings)
    except ValidationError as error:
        print(f"ollama-gateway: {describe_error(error)}", file=sys.stderr)
        return 2
    except FleetConfigError as error:
        print(f"ollama-gateway: invalid configuration: {error}", file=sys.stderr)
        return 2
    except DatabaseUnusable as error:
        # GATEWAY_DATABASE_URL names a file that cannot be used: configuration, like the above.
        print(f"ollama-gateway: {error}", file=sys.stderr)
        return 2
    except (KeyStoreError, DatabaseError, DatabaseFailed, NoDatabase) as error:
        print(f"ollama-gateway: error: {error}", file=sys.stderr)
        return 1
    return result

"""``ollama-gateway usage``: requests, tokens and errors per key, model or day, from the database.

The query and its formats are ``gateway.usage.report``'s, shared with the admin API.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.cli.argument import argument
from gateway.cli.where import existing_database
from gateway.settings import Settings
from gateway.usage.report import (
    COLUMNS,
    GROUPINGS,
    InvalidUsageQuery,
    UsageQuery,
    UsageReport,
    day,
    grouping,
    numbers,
    report,
)
from gateway.usage.store import open_usage_store


def add_commands(commands: Any) -> None:
    usage = commands.add_parser(
        "usage",
        help="report requests, tokens and errors",
        description="Requests, prompt and completion tokens and errors, per key, model or UTC day.",
    )
    usage.add_argument(
        "--since", type=argument(day, InvalidUsageQuery), metavar="YYYY-MM-DD", help="first day included (UTC)"
    )
    usage.add_argument(
        "--until", type=argument(day, InvalidUsageQuery), metavar="YYYY-MM-DD", help="last day included (UTC)"
    )
    usage.add_argument("--key", metavar="NAME", help="only this key")
    usage.add_argument(
        "--by",
        type=argument(grouping, InvalidUsageQuery),
        default="key",
        metavar="|".join(GROUPINGS),
        help="one row per (default: key)",
    )
    output = usage.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--csv", action="store_true", help="print CSV")
    usage.set_defaults(handler=_report)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    try:
        query = UsageQuery(by=args.by, since=args.since, until=args.until, key=args.key)
    except InvalidUsageQuery as error:
        print(f"ollama-gateway: error: {error}", file=sys.stderr)
        return 2
    # Opening a missing file would create an empty database and report zeros for a mistyped path.
    existing_database(settings.database_url)
    store = open_usage_store(settings.database_url)
    try:
        result = report(store, query)
    finally:
        store.close()
    if args.json:
        print(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    elif args.csv:
        sys.stdout.write(result.as_csv())
    else:
        _print_table(result)
    return 0


def _print_table(result: UsageReport) -> None:
    by = result.query.by
    lines = [(group or "-", numbers(counts)) for group, counts in result.rows]
    width = max([len(by), len("TOTAL"), *(len(group) for group, _ in lines)])
    headers = [column.upper().replace("_", " ") for column in COLUMNS]
    print(f"{by.upper():<{width}}  " + "  ".join(headers))
    for group, values in [*lines, ("TOTAL", numbers(result.total))]:
        cells = (f"{value:>{len(header)}}" for value, header in zip(values.values(), headers, strict=True))
        print(f"{group:<{width}}  " + "  ".join(cells))

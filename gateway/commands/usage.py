"""``ollama-gateway usage``: requests, tokens and errors per key, model or day, from the database.

Counts reach the database in batches (every GATEWAY_USAGE_FLUSH_INTERVAL seconds and at shutdown),
so a report taken while the gateway runs can lag by that much.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
from typing import Any

from gateway.database import sqlite_path
from gateway.settings import Settings
from gateway.usagestore import Grouping, SqliteUsageStore, UsageCounts

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "errors")


def day(text: str) -> str:
    """A calendar day as YYYY-MM-DD (usage days are UTC)."""
    try:
        if not _DAY.fullmatch(text):
            raise ValueError
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (expected YYYY-MM-DD, e.g. 2026-01-31)") from None


def add_commands(commands: Any) -> None:
    usage = commands.add_parser(
        "usage",
        help="report requests, tokens and errors",
        description="Requests, prompt and completion tokens and errors, per key, model or UTC day.",
    )
    usage.add_argument("--since", type=day, metavar="YYYY-MM-DD", help="first day included (UTC)")
    usage.add_argument("--until", type=day, metavar="YYYY-MM-DD", help="last day included (UTC)")
    usage.add_argument("--key", metavar="NAME", help="only this key")
    usage.add_argument("--by", choices=("key", "model", "day"), default="key", help="one row per (default: key)")
    output = usage.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--csv", action="store_true", help="print CSV")
    usage.set_defaults(handler=_report)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    if args.since is not None and args.until is not None and args.since > args.until:
        print(f"ollama-gateway: error: --since {args.since} is after --until {args.until}", file=sys.stderr)
        return 2
    path = sqlite_path(settings.database_url)
    if not path.exists():
        # Opening would create an empty database and report zeros for a mistyped path.
        print(f"ollama-gateway: error: no database at {path}", file=sys.stderr)
        return 1
    by: Grouping = args.by
    store = SqliteUsageStore(settings.database_url)
    try:
        rows = store.report(by=by, since=args.since, until=args.until, key_name=args.key)
    finally:
        store.close()
    total = UsageCounts()
    for _, counts in rows:
        total.add(counts)
    if args.json:
        _print_json(args, rows, total)
    elif args.csv:
        _print_csv(by, rows)
    else:
        _print_table(by, rows, total)
    return 0


def _numbers(counts: UsageCounts) -> dict[str, int]:
    return {column: getattr(counts, column) for column in _COLUMNS}


def _print_json(args: argparse.Namespace, rows: list[tuple[str, UsageCounts]], total: UsageCounts) -> None:
    report = {
        "by": args.by,
        "since": args.since,
        "until": args.until,
        "key": args.key,
        # A request that named no model is grouped under null.
        "rows": [{args.by: group or None, **_numbers(counts)} for group, counts in rows],
        "total": _numbers(total),
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


def _print_csv(by: str, rows: list[tuple[str, UsageCounts]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([by, *_COLUMNS])
    for group, counts in rows:
        writer.writerow([group, *_numbers(counts).values()])


def _print_table(by: str, rows: list[tuple[str, UsageCounts]], total: UsageCounts) -> None:
    lines = [(group or "-", _numbers(counts)) for group, counts in rows]
    width = max([len(by), len("TOTAL"), *(len(group) for group, _ in lines)])
    headers = [column.upper().replace("_", " ") for column in _COLUMNS]
    print(f"{by.upper():<{width}}  " + "  ".join(headers))
    for group, numbers in [*lines, ("TOTAL", _numbers(total))]:
        cells = (f"{value:>{len(header)}}" for value, header in zip(numbers.values(), headers, strict=True))
        print(f"{group:<{width}}  " + "  ".join(cells))

"""``python -m bench``: run the benchmark, write JSON and Markdown, print the Markdown."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.plan import FULL, QUICK
from bench.report import markdown
from bench.runner import Options, run

RESULTS = Path(__file__).resolve().parent / "results"


def _scenarios(value: str) -> tuple[str, ...]:
    keys = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [key for key in keys if key not in "abcd" or len(key) != 1]
    if not keys or unknown:
        raise argparse.ArgumentTypeError("a comma-separated subset of a,b,c,d")
    return keys


def _setting(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name.startswith("GATEWAY_"):
        raise argparse.ArgumentTypeError("GATEWAY_NAME=value")
    return name, setting


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the gateway against direct access.")
    parser.add_argument("--scenarios", type=_scenarios, default=("a", "b", "c", "d"), help="subset of a,b,c,d")
    parser.add_argument("--repeat", type=int, help="interleaved repetitions (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke size: seconds, not minutes")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/<UTC time>.json)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    parser.add_argument("--max-minutes", type=float, help="hard cap for the whole run (default 45; 3 with --quick)")
    parser.add_argument(
        "--gateway-env", type=_setting, action="append", default=[], metavar="GATEWAY_X=V", help="extra gateway setting"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat is not None and not 1 <= args.repeat <= 20:
        raise SystemExit("--repeat must be between 1 and 20")
    plan = (QUICK if args.quick else FULL).with_repeat(args.repeat)
    minutes = args.max_minutes if args.max_minutes is not None else (3 if args.quick else 45)
    out: Path = args.out or RESULTS / (datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ".json")
    options = Options(
        plan=plan,
        scenarios=args.scenarios,
        pin=args.pin,
        max_seconds=minutes * 60,
        quick=args.quick,
        command=shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]),
        log=out.with_suffix(".log"),
        gateway_env=dict(args.gateway_env),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".log").unlink(missing_ok=True)
    # Backstop for the in-loop cap: SIGALRM ends the process even if the loop is stuck, and the
    # children follow (they die with their parent).
    signal.alarm(int(options.max_seconds) + 300)
    report = run(options)
    signal.alarm(0)
    out.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(
        f"bench: wrote {out}, {out.with_suffix('.md')} and the processes' output in {out.with_suffix('.log')}",
        file=sys.stderr,
    )
    incomplete = [key for key, scenario in report["scenarios"].items() if scenario["error"]]
    if incomplete:
        print(f"bench: incomplete scenarios: {', '.join(incomplete)}", file=sys.stderr)
    return 1 if incomplete else 0


if __name__ == "__main__":
    raise SystemExit(main())

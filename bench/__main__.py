"""``python -m bench``: run the benchmark (or, with ``--soak``, the soak), write JSON and Markdown,
print the Markdown."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import scale, scalereport
from bench.fleet import MAX_UPSTREAMS
from bench.plan import FULL, QUICK, SCALE, SCALE_QUICK, SOAK, SOAK_QUICK
from bench.report import markdown
from bench.runner import Options, run
from bench.soakreport import incomplete as soak_incomplete

RESULTS = Path(__file__).resolve().parent / "results"


def _scenarios(value: str) -> tuple[str, ...]:
    keys = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [key for key in keys if key not in "abcde" or len(key) != 1]
    if not keys or unknown:
        raise argparse.ArgumentTypeError("a comma-separated subset of a,b,c,d,e")
    return keys


def _counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.split(","))
    except ValueError:
        counts = ()
    if not counts or len(set(counts)) != len(counts) or not all(1 <= count <= MAX_UPSTREAMS for count in counts):
        raise argparse.ArgumentTypeError(f"distinct counts from 1 to {MAX_UPSTREAMS}, comma-separated (e.g. 1,3)")
    return counts


def _setting(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name.startswith("GATEWAY_"):
        raise argparse.ArgumentTypeError("GATEWAY_NAME=value")
    return name, setting


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the gateway against direct access.")
    parser.add_argument("--scenarios", type=_scenarios, help="subset of a,b,c,d,e (default: a,b,c,d)")
    parser.add_argument("--repeat", type=int, help="interleaved repetitions (default 3; 1 with --quick)")
    parser.add_argument(
        "--upstreams",
        type=_counts,
        default=(1,),
        metavar="N[,M...]",
        help="fast upstreams behind the gateway (default 1); several counts: one gateway side each, "
        "compared with the first",
    )
    parser.add_argument("--quick", action="store_true", help="smoke size: seconds, not minutes")
    parser.add_argument("--soak", action="store_true", help="run the soak (against the gateway only), not a-d")
    parser.add_argument(
        "--scale", action="store_true", help="run the scale scenario (keys, models, usage rows, upstreams, streams)"
    )
    parser.add_argument("--soak-minutes", type=float, help="soak length (default 10; 0.15 with --quick)")
    parser.add_argument("--soak-streams", type=int, help="streams kept open (default 200; 10 with --quick)")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/<UTC time>.json)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="hard cap for the whole run (default 45; 3 with --quick; --soak: its minutes + 5, + 1 with --quick)",
    )
    parser.add_argument(
        "--gateway-env", type=_setting, action="append", default=[], metavar="GATEWAY_X=V", help="extra gateway setting"
    )
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.repeat is not None and not 1 <= args.repeat <= 20:
        raise SystemExit("--repeat must be between 1 and 20")
    if args.scale and (args.soak or args.scenarios is not None or args.upstreams != (1,)):
        raise SystemExit("--scale runs alone: no --soak, --scenarios or --upstreams")
    if args.soak and args.upstreams != (1,):
        raise SystemExit("--soak runs with one upstream: no --upstreams")
    if not args.soak:
        if args.soak_minutes is not None or args.soak_streams is not None:
            raise SystemExit("--soak-minutes and --soak-streams go with --soak")
        return
    if args.scenarios is not None or args.repeat is not None:
        raise SystemExit("--soak runs alone: no --scenarios, no --repeat")
    if args.soak_minutes is not None and not 0 < args.soak_minutes <= 24 * 60:
        raise SystemExit("--soak-minutes must be above 0 and at most a day")
    if args.soak_streams is not None and not 1 <= args.soak_streams <= 5000:
        raise SystemExit("--soak-streams must be between 1 and 5000")


def _outputs(out: Path, report: dict[str, object], text: str) -> None:
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    print(
        f"bench: wrote {out}, {out.with_suffix('.md')} and the processes' output in {out.with_suffix('.log')}",
        file=sys.stderr,
    )


def _scale(args: argparse.Namespace, out: Path, command: str) -> int:
    plan = (SCALE_QUICK if args.quick else SCALE).with_repeat(args.repeat)
    minutes = args.max_minutes if args.max_minutes is not None else (2 if args.quick else 15)
    signal.alarm(int(minutes * 60) + 120)
    report = scale.report(plan, args.pin, out.with_suffix(".log"), dict(args.gateway_env), minutes * 60, command)
    signal.alarm(0)
    _outputs(out, report, scalereport.markdown(report))
    if report["error"]:
        print(f"bench: scale scenario incomplete: {report['error']}", file=sys.stderr)
    return 1 if report["error"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check(args)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    out: Path = args.out or RESULTS / (datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".log").unlink(missing_ok=True)
    if args.scale:
        return _scale(args, out, command)
    plan = (QUICK if args.quick else FULL).with_repeat(args.repeat)
    soak = (SOAK_QUICK if args.quick else SOAK).with_size(args.soak_minutes, args.soak_streams) if args.soak else None
    if args.max_minutes is not None:
        minutes = args.max_minutes
    elif soak is not None:
        minutes = soak.minutes + (1 if args.quick else 5)
    else:
        minutes = 3 if args.quick else 45
    options = Options(
        plan=plan,
        scenarios=() if soak else args.scenarios or ("a", "b", "c", "d"),
        pin=args.pin,
        max_seconds=minutes * 60,
        quick=args.quick,
        command=command,
        log=out.with_suffix(".log"),
        gateway_env=dict(args.gateway_env),
        soak=soak,
        upstreams=args.upstreams,
    )
    # Backstop for the in-loop cap: SIGALRM ends the process even if the loop is stuck, and the
    # children follow (they die with their parent).
    signal.alarm(int(options.max_seconds) + 300)
    report = run(options)
    signal.alarm(0)
    _outputs(out, report, markdown(report))
    incomplete = [key for key, scenario in report["scenarios"].items() if scenario["error"]]
    if "soak" in report and soak_incomplete(report["soak"]):
        incomplete.append("soak")
    if incomplete:
        print(f"bench: incomplete scenarios: {', '.join(incomplete)}", file=sys.stderr)
    # The soak's goals decide its exit status; the scenarios' are figures to read.
    missed = [goal["goal"] for goal in report["goals"] if goal["goal"].startswith("soak:") and not goal["met"]]
    if missed:
        print(f"bench: soak goals not met: {'; '.join(missed)}", file=sys.stderr)
    return 1 if incomplete or missed else 0


if __name__ == "__main__":
    raise SystemExit(main())

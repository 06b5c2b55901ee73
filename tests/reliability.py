"""The reliability report: one JSON line per fault test, chaos trial and fuzz module, and the
long mode that fills it.

    python3 dev.py reliability            # 20 seeded kill -9 trials, 10,000 fuzz cases a property
    python -m tests.reliability --summary FILE   # the table README "Reliability" quotes

Every test that ends in exact feeds writes its line *before* it asserts, so a failing run is
in the report too (``feed_items_wrong`` above 0, or a missing line for a test that crashed);
the summary names both, and the long mode's exit code is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPORT_ENV = "FEEDPIPE_RELIABILITY_REPORT"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORT = ROOT / ".feedpipe" / "reliability.jsonl"

FAULT_NAMES = {
    "throttled": "BatchWriteItem attempts throttled", "unprocessed_calls": "calls with UnprocessedItems",
    "unprocessed_items": "items unprocessed", "http_500": "calls answered HTTP 500",
    "redis_restarts": "feed Redis kill -9 and restart", "broker_outages": "broker kill -9 and restart",
    "publish_failures": "publishes refused meanwhile",
}
LONG_MODE = {"FEEDPIPE_CHAOS_TRIALS": "20", "FEEDPIPE_FUZZ_EXAMPLES": "10000",
             # first deploy at the size issue 13 asks for
             "FEEDPIPE_FIRST_DEPLOY_USERS": "2000", "FEEDPIPE_FIRST_DEPLOY_FOLLOWS": "20000",
             "FEEDPIPE_FIRST_DEPLOY_POSTS": "20000",
             # GSI lag: 5 seeded runs at each lag, three times the CI run's users and writes
             "FEEDPIPE_GSI_TRIALS": "5", "FEEDPIPE_GSI_USERS": "36", "FEEDPIPE_GSI_STEPS": "150",
             "FEEDPIPE_GSI_FANS": "300"}
LONG_SUITES = [
    "tests/unit/test_fuzz.py",
    "tests/adapters/test_races.py",
    "tests/e2e/test_faults.py",
    "tests/e2e/test_chaos.py",
    "tests/adapters/test_audit.py",
    "tests/adapters/test_backfill.py",
    "tests/e2e/test_backfill_e2e.py",
    "tests/e2e/test_gsi_lag_e2e.py",
]


def report_path(default_dir: Path) -> Path:
    return Path(os.environ.get(REPORT_ENV) or default_dir / "reliability.jsonl")


def write_report(path: Path, figures: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(figures, sort_keys=True) + "\n")


def read_report(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(lines: list[dict[str, Any]]) -> str:
    """A markdown table: what ran, what was injected, what was checked, what was lost."""
    rows = ["| run | trials | injected | checked | feed items wrong | seconds |", "|---|---|---|---|---|---|"]
    chaos = [line for line in lines if line["test"] == "chaos_kill9"]
    if chaos:
        kills: Counter[str] = Counter()
        for line in chaos:
            kills.update(line["kills"])
        seeds = f"seeds {min(t['seed'] for t in chaos)}-{max(t['seed'] for t in chaos)}"
        rows.append(_row(f"kill -9 at random moments ({seeds})", chaos,
                         f"{kills.total()} kills ({kills['consumer']} consumer, {kills['worker']} worker group)",
                         f"{sum(t['records'] for t in chaos):,} stream records, {_items(chaos)}"))
    for line in lines:
        if line["test"].startswith("faults_"):
            injected = ", ".join(f"{v:,} {FAULT_NAMES.get(k, k.replace('_', ' '))}"
                                 for k, v in sorted(line.get("faults", {}).items()))
            rows.append(_row(line["test"].removeprefix("faults_").replace("_", " "), [line], injected or "-",
                             _items([line])))
    for lag in sorted({line["lag"] for line in lines if line["test"] == "gsi_lag"}):
        runs = [line for line in lines if line["test"] == "gsi_lag" and line["lag"] == lag]
        per_run = ", ".join(str(t["feed_items_wrong"]) for t in runs)
        rows.append(_row(f"GSI lag {lag} (seeds {min(t['seed'] for t in runs)}-{max(t['seed'] for t in runs)})", runs,
                         f"{sum(t['lagged_gsi_queries'] for t in runs):,} GSI queries answered lagging; "
                         f"wrong items per run: {per_run}",
                         f"{sum(t['records'] for t in runs):,} stream records, {_items(runs)}"))
    for line in lines:
        if line["test"] == "first_deploy":
            rows.append(_row(f"first deploy on a filled table: {line['users']:,} users, {line['follows']:,} follows, "
                             f"{line['posts']:,} posts ({line['dead_or_private']:,} deleted or private), consumer "
                             f"from LATEST", [line], "backfill and worker kill -9 mid-run, live app traffic",
                             _items([line])))
    for line in lines:
        if line["test"] == "fuzz":
            per = line["examples_per_property"]
            rows.append(f"| property-based fuzzing ({len(line['cases'])} properties, {per:,} examples each) | 1 "
                        f"| {line['cases_total']:,} generated inputs | every input parsed, ignored or dead-lettered "
                        f"with a reason | – | – |")
    return "\n".join(rows)


def _items(lines: list[dict[str, Any]]) -> str:
    return f"{sum(t['feed_items_checked'] for t in lines):,} feed items checked"


def _row(name: str, lines: list[dict[str, Any]], injected: str, checked: str) -> str:
    wrong = sum(t["feed_items_wrong"] for t in lines)
    seconds = sum(t["seconds"] for t in lines)
    return f"| {name} | {len(lines)} | {injected} | {checked} | {wrong if wrong else '**0**'} | {seconds:,.0f} |"


def run_long_mode(report: Path, extra: list[str]) -> int:
    """Run the reliability suites in their long mode into a fresh ``report``; print the table."""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)
    env = {**os.environ, **LONG_MODE, REPORT_ENV: str(report)}
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *LONG_SUITES, *extra],
                           cwd=ROOT, env=env)
    minutes = (time.monotonic() - started) / 60
    print(f"\nreliability long mode: pytest exit {code}, {minutes:.1f} min, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; report {report}\n")
    if report.exists():
        print(summarize(read_report(report)))
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description="feedpipe's reliability long mode and its report")
    parser.add_argument("--summary", type=Path, help="print the table of an existing report and exit")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    args, extra = parser.parse_known_args()
    if args.summary:
        print(summarize(read_report(args.summary)))
        return 0
    return run_long_mode(args.report, extra)


if __name__ == "__main__":
    sys.exit(main())

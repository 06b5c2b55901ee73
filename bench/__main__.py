"""Run every benchmark module, print the table, write JSON and the chart."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

from bench.figures import Figure

MODULES = ["bench.cpu", "bench.redis_feeds", "bench.consumer", "bench.shard_reads", "bench.fanout", "bench.huge",
           "bench.backfill", "bench.million"]
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description="feedpipe benchmarks, each beside its baseline")
    parser.add_argument("--short", action="store_true", help="small sizes: a smoke run (CI)")
    parser.add_argument("--only", nargs="*", help="module names, e.g. cpu fanout")
    parser.add_argument("--json", type=Path, help="bench/results.json; with --only, bench/results-NAMES.json")
    parser.add_argument("--chart", type=Path, help="docs/benchmarks.png; with --only, none unless given")
    parser.add_argument("--replot", action="store_true", help="redraw the chart from --json, measuring nothing")
    args = parser.parse_args()
    args.json = args.json or results_path(args.only)
    if args.chart is None and (args.replot or not args.only):
        args.chart = ROOT / "docs" / "benchmarks.png"
    if args.replot:
        saved = json.loads(args.json.read_text())["figures"]
        fields = set(Figure.__dataclass_fields__)
        chart([Figure(**{k: v for k, v in f.items() if k in fields}) for f in saved], args.chart)
        return 0
    figures: list[Figure] = []
    started = time.monotonic()
    for name in MODULES:
        if args.only and name.split(".")[-1] not in args.only:
            continue
        module = importlib.import_module(name)
        print(f"-- {name}", file=sys.stderr, flush=True)
        figures.extend(module.run(short=args.short))
    print(table(figures))
    report = {
        "short": args.short,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                    "platform": platform.platform()},
        "figures": [f.as_dict() for f in figures],
    }
    if not args.short:
        args.json.write_text(json.dumps(report, indent=2))
        if args.chart:
            chart(figures, args.chart)
    return 0


def results_path(only: list[str] | None) -> Path:
    """Where a run's figures go: one benchmark's run leaves the whole suite's file alone."""
    return ROOT / "bench" / (f"results-{'-'.join(only)}.json" if only else "results.json")


def table(figures: list[Figure]) -> str:
    rows = [("figure", "feedpipe", "baseline", "ratio", "target", "met")]
    for f in figures:
        base = f"{f.baseline:,.1f} {f.unit} ({f.baseline_name})" if f.baseline is not None else "-"
        ratio = f"{f.ratio:.2f}x" if f.ratio else "-"
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        rows.append((f.name, f"{f.value:,.1f} {f.unit}", base, ratio, f.target, met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def chart(figures: list[Figure], out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no chart", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [f for f in figures if f.ratio]
    fig, ax = plt.subplots(figsize=(13, 0.55 * len(compared) + 1.5))
    ax.barh([f.name for f in compared], [f.ratio or 0 for f in compared], color="tab:blue")
    ax.axvline(1, color="grey", linestyle="--")
    ax.set_xlabel("times better than the baseline measured in the same run")
    ax.set_title("feedpipe against its baselines")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())

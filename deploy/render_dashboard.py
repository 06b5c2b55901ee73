"""Render the shipped Grafana dashboard's panels from a real Prometheus, as one PNG.

For machines where Grafana cannot run. Every panel's queries are taken from
``deploy/grafana/feedpipe-dashboard.json`` and asked of Prometheus's ``query_range`` API, so the
picture shows exactly what the dashboard would. Needs matplotlib (``pip install matplotlib``).

    python deploy/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 10 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "feedpipe-dashboard.json"


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    # Short windows render short runs; the dashboard's 5m rates would smooth them away.
    expr = re.sub(r"\[5m\]", "[1m]", expr)
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as response:
        result: list[dict[str, Any]] = json.load(response)["data"]["result"]
        return result


def render(prometheus: str, minutes: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("type") == "timeseries"]
    end = time.time()
    start, step = end - minutes * 60, max(1.0, minutes * 60 / 240)
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for target in panel.get("targets", []):
            for series in query_range(prometheus, target["expr"], start, end, step):
                points = [(float(t) - end, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                if points:
                    label = ",".join(f"{v}" for k, v in series["metric"].items() if k not in ("job", "instance"))
                    ax.plot([p[0] / 60 for p in points], [p[1] for p in points], label=label or target["expr"][:40])
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("minutes ago", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle("feedpipe: the shipped dashboard, rendered from real scraped data", fontsize=13)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()
    render(args.prometheus, args.minutes, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

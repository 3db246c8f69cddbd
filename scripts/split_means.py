"""Average results.json files over class splits (and seeds): mean of the per-run accuracies.

    python scripts/split_means.py outputs/multirun/2026-11-23/02-00-32   [--group data]

Prints one Markdown row per group with the mean test accuracy over runs, the spread of the per-run
means (standard deviation), the mean per-run 95% CI half-width, and the mean wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="run or multirun folders holding results.json files")
    ap.add_argument("--group", default="data", help="results.json key to group runs by (default: data)")
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for root in args.paths for p in sorted(root.rglob("results.json"))]
    if not runs:
        raise SystemExit(f"no results.json under {', '.join(map(str, args.paths))}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[str(r[args.group])].append(r)
    keys = sorted({k for r in runs for k in r["results"] if k.startswith("test/")})
    print(f"| {args.group} | runs | " + " | ".join(keys) + " | wall time (s) |")
    print("|---|---|" + "---|" * len(keys) + "---|")
    for name, rs in sorted(groups.items()):
        cells = []
        for k in keys:
            accs = [r["results"][k]["acc"] for r in rs if k in r["results"]]
            cis = [r["results"][k]["ci95"] for r in rs if k in r["results"]]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.2f} (sd {sd:.2f}, ci {statistics.mean(cis):.2f})")
        wall = statistics.mean(r.get("wall_time_s", float("nan")) for r in rs)
        print(f"| {name} | {len(rs)} | " + " | ".join(cells) + f" | {wall:.0f} |")


if __name__ == "__main__":
    main()

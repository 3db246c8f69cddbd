"""PNG plots (matplotlib, headless): per run, training loss and validation accuracy against steps
(`curves.png` beside results.json); per sweep, test accuracy against K with 95% CI bands, one line
per learner and one panel per dataset and N (`accuracy_vs_k.png` in the sweep folder)."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from metarun.tracking.writers.metrics import read_metrics
from metarun.tracking.tables.results import aggregate, labels

log = logging.getLogger("metarun")
SETTING = re.compile(r"^test/(\d+)way_(\d+)shot$")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: str | Path) -> Path | None:
    """metrics.jsonl -> curves.png: train/loss (left) and every val/*/acc (right) against steps."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    loss, val = [], defaultdict(list)
    for row in read_metrics(metrics):
        if row.get("train/loss") is not None:
            loss.append((row["step"], row["train/loss"]))
        for k, v in row.items():
            if k.startswith("val/") and k.endswith("/acc") and v is not None:
                val[k[4:-4]].append((row["step"], v, row.get(f"{k[:-4]}/ci95") or 0.0))
    if not loss and not val:
        return None
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if loss:
        a.plot(*zip(*loss), lw=1)
    a.set(xlabel="step", ylabel="training loss", title="training loss")
    for key, points in val.items():
        steps, acc, ci = zip(*points)
        b.plot(steps, acc, marker="o", ms=3, label=key)
        b.fill_between(steps, [a_ - c for a_, c in zip(acc, ci)], [a_ + c for a_, c in zip(acc, ci)], alpha=0.2)
    b.set(xlabel="step", ylabel="accuracy (%)", title="validation accuracy (95% CI band)")
    if val:
        b.legend(fontsize=8)
        low, high = b.get_ylim()
        if high - low < 5:  # never zoom a flat curve into a range smaller than a few points
            middle = (high + low) / 2
            b.set_ylim(middle - 2.5, middle + 2.5)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_sweep(runs: list[dict], out: str | Path, lines: Sequence[str] = ("learner",), agg: str = "ci"
               ) -> Path | None:
    """Test accuracy against K (from `test/<N>way_<K>shot` keys), a panel per test data and N, a line
    per value of the `lines` keys (table keys, as `metarun-table --rows`); runs that share all of these
    are averaged, the band as the table's `agg`: their pooled 95% CI (ci) or the std over runs (std)."""

    cells: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        for key, score in run["results"].items():
            if m := SETTING.match(key):
                line = " / ".join(labels(run, lines, key.removeprefix("test/")))
                cells[run.get("test_data", run.get("data")), int(m[1]), line, int(m[2])].append(score)
    panels = sorted({(d, n) for d, n, _, _ in cells})
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (data, n) in zip(axes[0], panels):
        for learner in sorted({lr for d, nn, lr, _ in cells if (d, nn) == (data, n)}):
            ks = sorted(k for d, nn, lr, k in cells if (d, nn, lr) == (data, n, learner))
            stats = [aggregate(cells[data, n, learner, k], agg) for k in ks]
            mean = [s[0] for s in stats]
            # the band the label names: a one-run cell has no std over runs (no band), a missing CI neither
            spread = [(s[1] or 0.0) if agg == "ci" or s[2] > 1 else 0.0 for s in stats]
            ax.plot(ks, mean, marker="o", label=learner)
            ax.fill_between(ks, [m - w for m, w in zip(mean, spread)], [m + w for m, w in zip(mean, spread)],
                            alpha=0.2)
        band = "95% CI" if agg == "ci" else "std over runs"
        ax.set(xlabel="K (shots)", ylabel=f"test accuracy (%), band: {band}", title=f"{data}, {n}-way", xticks=sorted(
            {k for d, nn, _, k in cells if (d, nn) == (data, n)}))
        ax.legend(fontsize=8, title=" / ".join(lines), title_fontsize=8)
    fig.tight_layout()
    path = Path(out) / "accuracy_vs_k.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""`metarun-report RUN`: where a model fails, from its per-episode records (tracking/folder/episodes.py).

Writes `report/` in the run folder: `report.md` (per-class accuracy, the most confused class pairs,
the hardest episodes, accuracy against the number of shots, calibration: expected calibration error
over 10 confidence bins), `confusion_<setting>.png` (gold class against predicted class, rows
normalised) and `reliability.png` (accuracy against confidence, per setting), and, for runs evaluated
on cached features, misclassified queries beside their nearest support example. Class ids are shown
with their readable names where the run has them (`test_classes` in results.json, FewRel relations).
Every number is computed from the records, and the per-setting accuracy equals results.json's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from metarun.errors import MetarunError, tool_main
from metarun.tracking.folder import episodes
from metarun.tracking.folder.episodes import NOTA
from metarun.tracking.tables.plots import pyplot
from metarun.tracking.folder.run_dir import RESULTS

BINS = 10


def queries(lines: list[dict]) -> list[tuple[str, str, float]]:
    """(gold class, predicted class, confidence) of every query of a setting's episodes."""
    out = []
    for r in lines:
        names = [*r["classes"], NOTA]
        out += [(names[g], names[p], c) for g, p, c in zip(r["gold"], r["pred"], r["conf"])]
    return out


def per_class(qs: list[tuple[str, str, float]]) -> dict[str, tuple[float, int]]:
    """Class -> (accuracy in percent over its queries, number of queries)."""
    right, total = Counter(), Counter()
    for gold, pred, _ in qs:
        total[gold] += 1
        right[gold] += gold == pred
    return {c: (100.0 * right[c] / total[c], total[c]) for c in total}


def confused(qs: list[tuple[str, str, float]], top: int = 10) -> list[tuple[str, str, int, float]]:
    """The most frequent (gold, predicted) mistakes: count and share of the gold class's queries."""
    total = Counter(g for g, _, _ in qs)
    mistakes = Counter((g, p) for g, p, _ in qs if g != p)
    return [(g, p, n, 100.0 * n / total[g]) for (g, p), n in mistakes.most_common(top)]


def calibration(qs: list[tuple[str, str, float]], bins: int = BINS) -> tuple[float, list[tuple[float, float, int]]]:
    """Expected calibration error (percent) over equal-width confidence bins, and each bin's (mean
    confidence, accuracy, count)."""
    conf = np.array([c for _, _, c in qs])
    right = np.array([g == p for g, p, _ in qs], dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            table.append((float(conf[mask].mean()), float(right[mask].mean()), int(mask.sum())))
            ece += mask.mean() * abs(conf[mask].mean() - right[mask].mean())
    return 100.0 * ece, table


def shots_of(setting: str) -> int | None:
    m = re.search(r"(\d+)shot", setting)
    return int(m.group(1)) if m else None


def build(run_dir: str | Path) -> str:
    """Write the report and its plots into `run_dir/report/`; -> the markdown."""
    run_dir = Path(run_dir)
    records = episodes.read(run_dir)
    if not records:
        raise MetarunError(f"{run_dir} has no per-episode records (episodes/*.jsonl): it was made before runs wrote "
                           f"them. Test it again with `metarun-eval {run_dir}` and report on the new folder.")
    results = json.loads((run_dir / RESULTS).read_text()) if (run_dir / RESULTS).is_file() else {}
    episodes.check_against_results(run_dir, records, results.get("results", {}))
    names = results.get("test_classes") or {}
    show = lambda c: f"{c} ({names[c]})" if names.get(c) and names[c] != c else c  # noqa: E731
    out_dir = run_dir / "report"
    out_dir.mkdir(exist_ok=True)
    plt = pyplot()
    md = [f"# Where {results.get('learner', 'the model')} fails: {run_dir.name}", ""]
    md += ["| setting | shots | accuracy | 95% CI | ECE | episodes |", "|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for setting, lines in sorted(records.items(), key=lambda kv: (shots_of(kv[0]) or 0, kv[0])):
        accs, qs = episodes.accuracies(lines), queries(lines)
        ece, table = calibration(qs)
        ci = results.get("results", {}).get(setting, {}).get("ci95")
        md.append(f"| {setting} | {shots_of(setting)} | {accs.mean():.2f} | {'n/a' if ci is None else f'{ci:.2f}'} "
                  f"| {ece:.2f} | {len(lines)} |")
        line, = ax.plot([t[0] for t in table], [t[1] for t in table], marker="o", label=f"{setting} (ECE {ece:.1f})")
        for conf, acc, n in table:  # each bin's number of queries beside its point
            ax.annotate(str(n), (conf, acc), textcoords="offset points", xytext=(4, -9), fontsize=6,
                        color=line.get_color())
    ax.set(xlabel="confidence of the predicted class", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
           title="reliability (numbers: queries per bin)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "reliability.png", dpi=110)
    plt.close(fig)
    md += ["", "![reliability](reliability.png)", ""]
    for setting, lines in sorted(records.items()):
        qs = queries(lines)
        md += [f"## {setting}", "", "Per-class accuracy (lowest first):", "", "| class | accuracy | queries |",
               "|---|---|---|"]
        md += [f"| {show(c)} | {a:.2f} | {n} |" for c, (a, n) in sorted(per_class(qs).items(), key=lambda kv: kv[1])]
        md += ["", "Most confused pairs:", "", "| gold | predicted as | queries | share of gold |", "|---|---|---|---|"]
        md += [f"| {show(g)} | {show(p)} | {n} | {s:.1f}% |" for g, p, n, s in confused(qs)]
        accs = episodes.accuracies(lines)
        md += ["", "Hardest episodes:", "", "| episode | accuracy | classes |", "|---|---|---|"]
        md += [f"| {lines[i]['episode']} | {accs[i]:.1f} | {', '.join(lines[i]['classes'])} |"
               for i in np.argsort(accs, kind="stable")[:5]]
        md += _mistakes(episodes.read_mistakes(run_dir, setting), show)
        file = f"confusion_{setting.replace('/', '_')}.png"
        _confusion_plot(plt, qs, out_dir / file, setting)
        md += ["", f"![confusion]({file})", ""]
    text = "\n".join(md) + "\n"
    (out_dir / "report.md").write_text(text)
    return text


def _mistakes(examples: list[dict], show) -> list[str]:
    """Misclassified queries beside the support example nearest to them."""
    if not examples:
        return []
    md = ["", "Misclassified queries and the support example nearest to each (cosine similarity of the features):",
          "", "| query | gold | predicted | nearest support example | its class | similarity |",
          "|---|---|---|---|---|---|"]
    cell = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    md += [f"| {cell(m['query'])} | {show(m['gold'])} | {show(m['pred'])} | {cell(m['nearest'])} | "
           f"{show(m['nearest_class'])} | {m['similarity']:.2f} |" for m in examples[:10]]
    return md


def _confusion_plot(plt, qs, path: Path, title: str) -> None:
    classes = sorted({g for g, _, _ in qs} | {p for _, p, _ in qs})
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)))
    for g, p, _ in qs:
        counts[index[g], index[p]] += 1
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(16, 3 + 0.25 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
    ax.set_yticks(range(len(classes)), classes, fontsize=6)
    ax.set(xlabel="predicted", ylabel="gold", title=f"{title}: share of each gold class's queries")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metarun-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run folder (or a metarun-eval folder)")
    args = parser.parse_args(argv)
    if not (Path(args.run_dir) / RESULTS).is_file():
        print(f"metarun-report: error: {args.run_dir} holds no results.json: give a finished run folder.",
              file=sys.stderr)
        return 2
    status = tool_main("metarun-report", lambda: build(args.run_dir), hint="a copy of the run folder")
    if status == 0:
        print(f"wrote {Path(args.run_dir) / 'report' / 'report.md'}")
    return status


if __name__ == "__main__":
    sys.exit(main())

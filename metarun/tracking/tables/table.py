"""`metarun-table PATH...`: collect results.json files from run and sweep folders into one table.

Rows and columns are config keys: `learner`, `data`, `test_data`, `encoder`, `seed`, any dotted key of
a run's saved config (`sampler.k_shot`, `data.split`, read from `.hydra/config.yaml`), or `setting`
(the metric name after `test/`, e.g. `5way_1shot`). The first column is always the information
regime (`regime`: class names read or not, test-class utterances read transductively or not), so runs
of different regimes never share a row. Runs that land in the same cell (seeds, class splits) are
aggregated: `--agg std` gives mean ± standard deviation over runs, `--agg ci` the pooled
mean ± 95% CI (the mean of the runs' means; the runs' standard errors combined). One run shows its
own mean ± CI. Tables are written as Markdown, CSV and LaTeX.

    metarun-table outputs/multirun/2026-11-23/10-00-00 --rows learner --cols test_data,setting

`--published FILE` prints the table beside published numbers (`table_vs_published.md`). The file is
YAML: `source` (a citation), `rows`, `cols` and `agg` (defaults for those options), optional
`row_header` and `row_names` (display names for the row key and its labels), and `values`: row
label -> "col label" (the column's values joined with " / ", as the table heads them) -> published
accuracy, and `regime` (the information regime of the published rows, e.g. "no names, inductive";
`regimes: {row label: regime}` for rows of another). See scripts/published/.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from metarun.errors import ConfigError, tool_main
from metarun.tracking.tables.plots import plot_sweep
from metarun.tracking.tables.results import aggregate, labels, load_runs, regime_label
from metarun.tracking.folder.run_dir import ADDED_LATER, flatten, ignored

POOLED = ("seed", "data.split")  # runs differing only in these are repeats of one experiment
KEY_OF = {"learner": "learner.name", "data": "data.name", "encoder": "encoder.name",
          "test_data": "eval.test.data.name"}  # table keys read from results.json -> their config keys

log = logging.getLogger("metarun")

def build_table(runs: list[dict], rows: list[str], cols: list[str], prefix: str = "test/", how: str = "ci"):
    """-> (row labels, column labels, {(row, col): (mean, spread, n)}).

    Runs share a cell only when their configs differ in nothing but POOLED keys (seeds, class splits)
    and `pool`; call `split_rows` first to add the keys that tell the others apart to `rows`."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        for metric, score in run["results"].items():
            if not metric.startswith(prefix) or "acc" not in score:
                continue
            setting = metric[len(prefix):]
            cells[labels(run, rows, setting), labels(run, cols, setting)].append(score)
    row_labels = sorted({r for r, _ in cells}, key=_natural)
    col_labels = sorted({c for _, c in cells}, key=_natural)
    return row_labels, col_labels, {k: aggregate(v, how) for k, v in cells.items()}


def split_rows(runs: list[dict], rows: list[str], cols: list[str], pool: Sequence[str] = (),
               prefix: str = "test/") -> list[str]:
    """"regime", `rows` and every config key in which runs that would share a cell differ (other than the
    pooled ones), so that unlike runs (a frozen and a trained run, two target files, a run that read the
    class names and one that did not) never share a cell."""
    rows = ["regime", *(r for r in rows if r != "regime")]
    pooled = {*POOLED, *pool}
    while True:
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for run in runs:
            for setting in {m[len(prefix):] for m in run["results"] if m.startswith(prefix)}:
                groups[labels(run, rows, setting), labels(run, cols, setting)].append(run)
        differing = set()
        for group in groups.values():
            # a key added to metarun after a run was made counts as its default there (ADDED_LATER)
            configs = [ADDED_LATER | flatten(r["config"]) for r in group if r["config"]]
            keys = {k for c in configs for k in c} - {KEY_OF.get(x, x) for x in (*rows, *cols)}
            differing |= {k for k in keys if not _pooled(k, pooled) and len({repr(c.get(k)) for c in configs}) > 1}
        differing -= set(rows)  # a key already in the rows splits its cells (no second pass over it)
        if not differing:
            return rows
        log.info("runs that would share a cell differ in %s: those keys become part of the rows",
                 ", ".join(sorted(differing)))
        rows += sorted(differing)


def _pooled(key: str, pooled: set[str]) -> bool:
    return ignored(key) or any(key == p or key.startswith(p + ".") for p in pooled)


def _natural(labels: tuple[str, ...]):
    """Sort '10way' after '5way' and numbers as numbers."""
    import re

    return [tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)) for s in labels]


def row_head(rows: list[str]) -> list[str]:
    """The row key's header cells: the regime in a column of its own, then the other keys joined."""
    if rows[:1] == ["regime"]:
        return ["regime", " / ".join(rows[1:]) or "runs"]
    return [" / ".join(rows)]


def row_cells(rows: list[str], label: tuple[str, ...]) -> list[str]:
    """A row label's cells, as `row_head` heads them."""
    if rows[:1] == ["regime"]:
        return [label[0], " / ".join(label[1:]) or "all"]
    return [" / ".join(label)]


def render(rows: list[str], cols: list[str], table, fmt: str, how: str = "ci") -> str:
    row_labels, col_labels, cells = table
    head = row_head(rows)
    header = head + [" / ".join(c) for c in col_labels]

    uneven = len({v[2] for v in cells.values()}) > 1  # cells pool different numbers of runs: show every n

    def cell(r, c, plus: str) -> str:
        if (r, c) not in cells:
            return ""
        return cell_text(*cells[r, c], plus=plus, how=how, show_n=uneven)

    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(head + [f"{h} {k}" for h in header[len(head):] for k in ("mean", "spread")] + ["runs"])
        for r in row_labels:
            values, runs = [], 0
            for c in col_labels:
                mean, spread, n = cells.get((r, c), (None, None, 0))
                values += ["" if mean is None else f"{mean:.2f}", "" if spread is None else f"{spread:.2f}"]
                runs = max(runs, n)
            writer.writerow([*row_cells(rows, r), *values, runs])
        return out.getvalue()
    if fmt == "tex":
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * len(head) + "c" * len(col_labels) + "}", r"\toprule",
                 " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
        lines += [" & ".join([*map(esc, row_cells(rows, r))] + [esc(cell(r, c, r"$\pm$")) for c in col_labels])
                  + r" \\" for r in row_labels]
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row_cells(rows, r) + [cell(r, c, "±") for c in col_labels]) + " |" for r in row_labels]
    return "\n".join(lines) + "\n" + LEGEND[how]


LEGEND = {"ci": "\n± is the 95% CI: a run's own, or pooled over a cell's n runs.\n",
          "std": "\n± is the standard deviation over a cell's n runs; a cell of one run shows its own 95% CI (CI).\n"}


def unfinished_jobs(paths) -> list[Path]:
    """Run folders (a saved config) under `paths` without results.json: jobs the table cannot show."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += [c.parent.parent for c in sorted(path.rglob(".hydra/config.yaml"))
                      if not (c.parent.parent / "results.json").is_file()]
    return found


def cell_text(mean: float, spread: float | None, n: int, plus: str = "±", how: str = "ci",
              show_n: bool = False) -> str:
    """`81.00 ± 1.41 (n=2)`; with how=std a one-run cell says that its spread is a CI: `95.00 ± 1.00 (CI)`;
    `show_n` (a table whose cells pool different numbers of runs): `(n=1)` too."""
    spread_text = "n/a" if spread is None else f"{spread:.2f}"
    note = f" (n={n})" if n > 1 else (" (CI)" if how == "std" else " (n=1)" if show_n else "")  # (CI): one run
    return f"{mean:.2f} {plus} {spread_text}{note}"


def load_published(path: str | Path) -> dict:
    """A published-numbers file (see the module docstring), checked for the keys it needs."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"published-numbers file {file} does not exist.")
    spec = OmegaConf.to_container(OmegaConf.load(file))
    if not isinstance(spec, dict) or not isinstance(spec.get("values"), dict):
        raise ConfigError(f"{file} needs a `values` mapping: row label -> column label -> published accuracy.")
    regimes = {"regime": spec.get("regime"), **{f"regimes.{k}": v for k, v in (spec.get("regimes") or {}).items()}}
    unstated = [str(r) for r in spec["values"] if published_regime(spec, r) is None]
    wrong = {k: v for k, v in regimes.items() if v is not None and v not in REGIMES}
    if unstated or wrong:
        raise ConfigError(f"{file}: every published row needs its information regime (`regime` for all rows, "
                          f"`regimes: {{row: regime}}` for some), one of {', '.join(map(repr, REGIMES))}; "
                          + (f"rows without one: {', '.join(unstated)}" if unstated else
                             ", ".join(f"{k} is {v!r}" for k, v in wrong.items())) + ".")
    return spec


REGIMES = tuple(regime_label(n, t) for n in (False, True) for t in (False, True))


def published_regime(spec: dict, row) -> str | None:
    return (spec.get("regimes") or {}).get(row, spec.get("regime"))


def render_published(rows: list[str], cols: list[str], table, spec: dict, how: str = "ci") -> str:
    """Markdown: for every column, ours (mean ± spread) and the published number side by side; rows of
    either side only (a published method we did not run, a run without a published number) included.
    Rows are grouped by information regime (the first row key); a published row meets ours only when
    both its label and its regime (the file's `regime`, or `regimes` per row) are ours."""
    row_labels, col_labels, cells = table
    published = {(published_regime(spec, r), str(r)): {str(c): v for c, v in cols_.items()}
                 for r, cols_ in spec["values"].items()}
    col_names = sorted({" / ".join(c) for c in col_labels} | {c for v in published.values() for c in v},
                       key=lambda c: _natural((c,)))  # a dataset's columns together, shots in order
    all_rows = list(row_labels) + [r for r in published if r not in row_labels]
    all_rows.sort(key=lambda r: REGIMES.index(r[0]) if r[0] in REGIMES else len(REGIMES))  # stable: blocks
    names = {str(k): str(v) for k, v in (spec.get("row_names") or {}).items()}
    header = ["regime", str(spec.get("row_header", " / ".join(rows[1:])))]
    header += [f"{c} {side}" for c in col_names for side in ("ours", "published")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in all_rows:
        label = " / ".join(r[1:])
        out = [r[0], names.get(label, label).replace("|", "\\|")]
        for c in col_names:
            key = (r, tuple(c.split(" / ")))
            if key in cells:
                out.append(cell_text(*cells[key], how=how))
            else:
                out.append("")
            value = published.get(r, {}).get(c)
            out.append("" if value is None else f"{float(value):.2f}")
        lines.append("| " + " | ".join(out) + " |")
    source = f"\nPublished: {spec['source']}\n" if spec.get("source") else ""
    return "\n".join(lines) + "\n" + LEGEND[how] + source


def write_tables(runs: list[dict], out_dir: str | Path, rows: list[str], cols: list[str],
                 how: str = "ci", prefix: str = "test/") -> str | None:
    """Write table.md / table.csv / table.tex of `runs` (from `load_runs`) into `out_dir`, with `rows`
    already split (`split_rows`); -> the Markdown (None: no results)."""
    if not runs:
        return None
    table = build_table(runs, rows, cols, prefix, how)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fmt, name in (("md", "table.md"), ("csv", "table.csv"), ("tex", "table.tex")):
        (out / name).write_text(render(rows, cols, table, fmt, how))
    return render(rows, cols, table, "md", how)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metarun-table", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders, sweep folders or results.json files")
    parser.add_argument("--rows", help="comma-separated config keys (default: learner)")
    parser.add_argument("--cols", help="comma-separated config keys (default: test_data,setting)")
    parser.add_argument("--agg", choices=("ci", "std"),
                        help="several runs per cell: pooled mean ± 95%% CI (ci, the default) or mean ± std over "
                             "runs (std)")
    parser.add_argument(
        "--published", help="YAML of published numbers to print beside ours (writes table_vs_published.md)"
    )
    parser.add_argument("--metric", default="test/", help="metric prefix to tabulate (default: test/; val/ also works)")
    parser.add_argument("--out", default=".", help="folder for table.md / .csv / .tex (default: the current folder)")
    parser.add_argument(
        "--pool",
        default="",
        help="comma-separated config keys whose runs may share a cell, besides "
        "seed and data.split (runs differing in any other key are split)",
    )
    parser.add_argument("--plot", action="store_true", help="also write accuracy_vs_k.png (test accuracy against K)")
    args = parser.parse_args(argv)
    return tool_main("metarun-table", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"metarun-table: error: {', '.join(missing)} does not exist.", file=sys.stderr)
        return 2
    spec = {}
    if args.published:
        try:
            spec = load_published(args.published)
        except ConfigError as e:
            print(f"metarun-table: error: {e}", file=sys.stderr)
            return 2
    out = args.out
    keys = lambda given, default: [k for k in (given or default).split(",") if k]  # noqa: E731
    rows = keys(args.rows, ",".join(spec.get("rows", ["learner"])))
    cols = keys(args.cols, ",".join(spec.get("cols", ["test_data", "setting"])))
    how = args.agg or spec.get("agg", "ci")
    runs = load_runs(args.paths)
    unfinished = unfinished_jobs(args.paths)
    if unfinished:
        print(f"metarun-table: warning: {len(unfinished)} run folder(s) have no results.json (unfinished or failed "
              f"jobs), so the table leaves them out: {', '.join(map(str, unfinished[:5]))}"
              f"{' ...' if len(unfinished) > 5 else ''}. Relaunch the sweep to finish them.", file=sys.stderr)
    rows = split_rows(runs, rows, cols, keys(args.pool, ""), args.metric)
    md = write_tables(runs, out, rows, cols, how, args.metric)
    if md is None:
        print(
            f"metarun-table: error: no results.json under {', '.join(args.paths)}; finished runs write one.",
            file=sys.stderr,
        )
        return 2
    if args.plot:
        plot_sweep(runs, out, lines=rows, agg=how)
    if spec:
        md = render_published(rows, cols, build_table(runs, rows, cols, args.metric, how), spec, how)
        (Path(out) / "table_vs_published.md").write_text(md)
    print(md, end="")
    print(f"(written to {Path(out) / 'table.md'}, table.csv, table.tex)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The out-of-scope table of runs of `eval=clinc_oos_per_class` (scripts/reproduce.sh clinc_oos): one row
per (data condition, model, rejection, score, rule) and K, with in-scope accuracy, out-of-scope recall,
precision, F1, AUROC and closed-set accuracy (in-scope test queries, nothing rejected; means over draws),
beside the published rows of scripts/published/clinc_oos.yaml.

    python scripts/oos_table.py outputs/reproduce/clinc_oos [--published scripts/published/clinc_oos.yaml]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

METRICS = ("in_scope_acc", "oos_recall", "oos_precision", "oos_f1", "oos_auroc", "closed_set_acc")


def rows_of(folder: Path) -> list[dict]:
    rows = []
    for file in sorted(folder.rglob("results.json")):
        results = json.loads(file.read_text())
        config = yaml.safe_load((file.parent / ".hydra" / "config.yaml").read_text())
        condition = config["data"].get("condition", "full")
        for key, value in results["results"].items():
            per_class = re.search(r"^test/.*_(\d+)per_class$", key)
            if not per_class or "in_scope_acc" not in value:  # episodic runs: metarun-table reads those
                continue
            k = per_class.group(1)
            how = ("oos_train as a class" if value.get("reject") == "oos_class" else
                   f"threshold on {value.get('oos_score', 'maxprob')}, rule {value.get('threshold_rule')}"
                   + (f" {value['reject_target']}" if value.get("threshold_rule") == "recall" else ""))
            encoder = config["encoder"].get("name", "encoder")  # the run's, e.g. minilm (tests: tiny)
            frozen = config["encoder"].get("freeze") or not config["trainer"].get("max_steps")
            model = (f"{encoder} fine-tuned per draw" if config["eval"]["test"].get("head") == "finetune"
                     else f"{encoder} {'frozen' if frozen else 'meta-trained'} + logistic regression")
            rows.append({"condition": condition, "K": k, "model": model, "method": how,
                         "regime": results.get("regime", ""),
                         "draws": value.get("draws"), **{m: value.get(m) for m in METRICS}})
    return rows


def render(rows: list[dict], published: dict | None) -> str:
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["| data, K per intent | method | in-scope | OOS recall | precision | F1 | AUROC | closed-set | regime |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["condition"], int(r["K"]), r["method"])):
        lines.append(f"| {r['condition']}, {r['K']} | {r['model']}, {r['method']} "
                     f"({r['draws']} draws) | " + " | ".join(fmt(r[m]) for m in METRICS) + f" | {r['regime']} |")
    for row in (published or {}).get("rows", []):
        lines.append(f"| {row['data']} | {row['method']} (published: {row.get('source', published['source'])}) | "
                     + " | ".join(fmt(row.get(m)) for m in METRICS) + f" | {row['regime']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a sweep or run folder of eval=clinc_oos_per_class runs")
    parser.add_argument("--published", help="YAML of published rows (scripts/published/clinc_oos.yaml)")
    parser.add_argument("--out", help="also write the table here (Markdown)")
    args = parser.parse_args(argv)
    rows = rows_of(Path(args.folder))
    if not rows:
        print(f"oos_table: no out-of-scope results under {args.folder}", file=sys.stderr)
        return 2
    published = yaml.safe_load(Path(args.published).read_text()) if args.published else None
    md = render(rows, published)
    print(md, end="")
    if args.out:
        Path(args.out).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

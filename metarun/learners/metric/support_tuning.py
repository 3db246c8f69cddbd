"""Support-set tuning at test time: a few gradient steps on a copy of the encoder's top transformer
layers, fitted to one episode's labelled support set, before the episode is classified.

The copy is the encoder with its own parameters (`copy.deepcopy`); only its top `layers` blocks
train, with Adam at `lr`, so the learner's meta-parameters never change (a test checks it). Losses:
- `proto`: each support item classified by the prototypes of the other support items (leave one
  out), the episode loss ProtoNet trains with; needs two shots, so a 1-shot episode uses `pairs`;
- `pairs`: SetFit's cosine-similarity loss on every pair of support items: (cos(a, b) - [same class])^2.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

LOSSES = ("proto", "pairs")


def pair_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's CosineSimilarityLoss over all distinct pairs: mean of (cos - same)^2."""
    z = F.normalize(features, dim=-1)
    i, j = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    target = (labels[i] == labels[j]).to(z.dtype)
    return ((z[i] * z[j]).sum(-1) - target).pow(2).mean()


def leave_one_out_loss(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Cross-entropy of each support item against prototypes built without it (K >= 2)."""
    one_hot = F.one_hot(labels, n_way).to(features.dtype)  # (S, N)
    sums, counts = one_hot.T @ features, one_hot.sum(0)  # (N, D), (N,)
    # item i's own class prototype leaves it out; the other classes' prototypes are the full means
    others = (sums.unsqueeze(0) - one_hot.unsqueeze(-1) * features.unsqueeze(1)) / (counts - one_hot).unsqueeze(-1)
    logits = -(features.unsqueeze(1) - others).pow(2).sum(-1)  # (S, N)
    return F.cross_entropy(logits, labels)


def tuned_copy(encoder, support: dict[str, torch.Tensor], labels: torch.Tensor, n_way: int, steps: int, lr: float,
               layers: int, loss: str):
    """A copy of `encoder` whose top `layers` transformer blocks took `steps` Adam steps on the support set."""
    tuned = copy.deepcopy(encoder)
    tuned.train()  # dropout on while tuning, as in training
    blocks = list(tuned.transformer_layers())[-layers:]
    trainable = [p for block in blocks for p in block.parameters()]
    for p in tuned.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trainable, lr=lr)
    shots = torch.bincount(labels, minlength=n_way).min()
    kind = loss if loss == "pairs" or shots >= 2 else "pairs"
    with torch.enable_grad():
        for _ in range(steps):
            feats = tuned(support).float()
            value = pair_loss(feats, labels) if kind == "pairs" else leave_one_out_loss(feats, labels, n_way)
            opt.zero_grad()
            value.backward()
            opt.step()
    tuned.eval()
    return tuned

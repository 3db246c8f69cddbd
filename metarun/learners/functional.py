"""Pure tensor functions shared by learners (no modules, no state)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def prototypes(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class means: (..., N*K, D), (..., N*K) -> (..., N, D); leading dims are tasks."""
    one_hot = F.one_hot(labels, n_way).to(features.dtype)  # (..., N*K, N)
    return (one_hot.transpose(-2, -1) @ features) / one_hot.sum(-2).unsqueeze(-1)


def soft_kmeans_prototypes(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int, steps: int,
                           logits, weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Transductive prototypes (Ren et al. 2018, soft k-means): start from the class means of the
    support set; each step, every query joins every class with weight softmax(logits(query, protos))
    and the prototypes become the weighted means of support and queries (support items weigh
    `weight`, 1 unless told: class-name embeddings standing in for a support set weigh the label prior's w).
    (N*K, D), (N*K,), (M, D) -> (N, D); no queries, or 0 steps, give the support prototypes."""
    one_hot = F.one_hot(labels, n_way).to(support.dtype) * weight  # (N*K, N)
    sums, counts = one_hot.T @ support, one_hot.sum(0)  # (N, D), (N,)
    protos = sums / counts.unsqueeze(-1)
    for _ in range(steps):
        w = logits(query, protos).softmax(-1)  # (M, N)
        protos = (sums + w.T @ query) / (counts + w.sum(0)).unsqueeze(-1)
    return protos


def rectified_prototypes(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int,
                         epsilon: float = 10.0) -> torch.Tensor:
    """Prototype rectification (BD-CSPN, Liu, Song & Qin, ECCV 2020), transductive: (1) cross-class
    bias: the queries are shifted by the difference of the support and query means; (2) intra-class
    bias: each query joins the class of its nearest (cosine) support prototype, and each prototype
    becomes the mean of its support examples and joined queries weighted by softmax(epsilon x cosine
    to the prototype). (N*K, D), (N*K,), (M, D) -> (N, D); no queries give the support prototypes."""
    protos = prototypes(support, labels, n_way)
    if not len(query):
        return protos
    query = query + (support.mean(0) - query.mean(0))
    pseudo = cosine_similarity(query, protos).argmax(-1)
    members = torch.cat([support, query])
    member_labels = torch.cat([labels, pseudo])
    sims = cosine_similarity(members, protos)  # (K*N + M, N)
    own = F.one_hot(member_labels, n_way).bool()  # (K*N + M, N): which prototype each member may pull
    weights = (epsilon * sims).masked_fill(~own, float("-inf")).softmax(0)  # over each class's members
    return weights.T @ members


def interleaved_order(labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """The permutation that presents a class-grouped support set shot by shot: shot 1 of every class,
    then shot 2, ... (the fixed evaluation order of the sequence learners, SNAIL and MANN)."""
    one_hot = F.one_hot(labels, n_way)
    shot = ((one_hot.cumsum(0) - 1) * one_hot).sum(-1)  # how many items of its class come before each
    return torch.argsort(shot * n_way + labels, stable=True)


def random_presentation(n_support: int, n_way: int, max_way: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Training presentation of an episode to a sequence learner: a random support order, and a
    random subset of the `max_way` one-hot label slots for its classes."""
    return torch.randperm(n_support, device=device), torch.randperm(max_way, device=device)[:n_way]


FEATURE_NORMS = ("none", "l2", "center_l2")


def normalize_episode(support: torch.Tensor, query: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode features for learners that read them as raw inputs (SNAIL, MANN): `l2` scales every
    feature to unit length; `center_l2` first subtracts the support mean ("CL2N", Wang et al. 2019,
    SimpleShot), removing the direction all of a frozen encoder's sentence embeddings share, so that
    dot products between items say which are alike. (N*K, D), (M, D) -> the same shapes."""
    if how == "center_l2":
        mean = support.mean(0, keepdim=True)
        support, query = support - mean, query - mean
    if how in ("l2", "center_l2"):
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    return support, query


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, D), (N, D) -> (M, N) squared distances, computed exactly (no expansion trick)."""
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(-1)


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, D), (N, D) -> (M, N)."""
    return F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def name_contrastive(query: torch.Tensor, names: torch.Tensor, labels: torch.Tensor, temperature: float
                     ) -> torch.Tensor:
    """Name-utterance contrastive loss: each query's cosine similarities to the episode's class-name
    embeddings, divided by `temperature`, scored by cross-entropy against its class. (M, D), (N, D),
    (M,) -> scalar."""
    logits = F.normalize(query, dim=-1) @ F.normalize(names, dim=-1).T / temperature
    return F.cross_entropy(logits, labels)


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form; ContrastNet's episode loss):
    for each anchor i, minus the mean over its positives p (same label, p != i) of
    log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) ), with s the cosine similarity; averaged over
    anchors that have a positive. (M, D), (M,) -> scalar."""
    z = F.normalize(features, dim=-1)
    sim = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = sim.masked_fill(eye, float("-inf")).log_softmax(-1)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    has = positives.any(-1)
    per_anchor = -(log_prob.masked_fill(~positives, 0).sum(-1) / positives.sum(-1).clamp(min=1))
    return per_anchor[has].mean()


def linear_head(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(..., M, D), (..., N, D), (..., N) -> (..., M, N) logits; leading dims are tasks."""
    return features @ weight.transpose(-1, -2) + bias.unsqueeze(-2)


def proto_head(support: torch.Tensor, labels: torch.Tensor, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Proto-MAML head (Triantafillou et al. 2020): W = 2c, b = -|c|^2, so that the linear logits equal
    ProtoNet's -|x - c|^2 up to a per-query constant. (..., N*K, D) -> (..., N, D), (..., N)."""
    c = prototypes(support, labels, n_way)
    return 2 * c, -c.pow(2).sum(-1)


def sgd_update(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
               lrs: dict[str, torch.Tensor | float]) -> dict[str, torch.Tensor]:
    """One inner step: p - lr * g for the parameters in `grads`; others pass through unchanged.
    (One fused kernel per tensor: `add` with alpha for a float lr, `addcmul` for a learned one.)"""
    def step(p, g, lr):
        return torch.add(p, g, alpha=-lr) if isinstance(lr, float) else torch.addcmul(p, lr, g, value=-1)
    return {n: step(p, grads[n], lrs[n]) if n in grads else p for n, p in params.items()}


def sgd(lr_at):
    """The inner-loop update of MAML and its variants: `lr_at(step) -> {name: lr}`, then `sgd_update`."""
    return lambda step, params, grads, loss: sgd_update(params, grads, lr_at(step))


def adapt(loss_fn, params: dict[str, torch.Tensor], names: list[str], steps: int, update,
          first_order: bool, func_grad: bool = False, zero_first: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The inner loop of gradient-based meta-learning as a pure function of a parameter dict.

    `loss_fn(params) -> scalar` is the support loss; only `names` are adapted (and differentiated);
    `update(step, params, grads, loss) -> params` turns the gradients into new parameters: `sgd(lr_at)`
    for MAML and its variants, a learned optimiser's step for `lstm_meta`. Inner gradients are
    partial derivatives w.r.t. the adapted tensors, while the outer backward differentiates through
    everything, including how their starting values were computed (e.g. a Proto-MAML head built from
    support features). With `first_order` the inner gradients are constants (FOMAML); otherwise the
    meta-gradient has the second-order terms.

    Two equivalent engines: `torch.autograd.grad` on fresh aliases of the adapted tensors (the alias
    makes the derivative partial), and `torch.func.grad` (`func_grad=True`), which works inside
    `torch.func.vmap`.

    `zero_first` names parameters whose first inner gradient is known to be exactly zero (the
    encoder below a zero-initialised head: dL/dfeatures = dL/dlogits @ W = 0); step 0 skips them.
    """
    all_names = names
    for step in range(steps):
        names = [n for n in all_names if n not in zero_first] if step == 0 else all_names
        if func_grad:
            grads, loss = torch.func.grad_and_value(lambda a: loss_fn({**params, **a}))({n: params[n] for n in names})
        else:
            alias = {n: params[n].view_as(params[n]) if params[n].requires_grad else params[n].detach().requires_grad_()
                     for n in names}
            # retain_graph: the outer loss may share this graph (fixed features behind an ANIL head)
            loss = loss_fn({**params, **alias})
            g = torch.autograd.grad(loss, list(alias.values()),
                                    create_graph=not first_order, retain_graph=True, allow_unused=True)
            grads = {n: gi if gi is not None else torch.zeros_like(params[n]) for n, gi in zip(names, g)}
        if first_order:
            grads, loss = {n: g.detach() for n, g in grads.items()}, loss.detach()
        params = update(step, params, grads, loss)
    return params


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The gradient-reversal layer (Ganin & Lempitsky, ICML 2015): the identity forward; backward, the
    gradient times -`scale`, so what follows learns to minimise a loss that what precedes maximises."""
    return _ReverseGradient.apply(x, scale)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule of the reversal's weight: 2 / (1 + exp(-gamma p)) - 1, from 0 at the start of
    training (p = 0) towards 1 at its end (p = 1), so the discriminator's noisy first signals barely move
    the encoder."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0

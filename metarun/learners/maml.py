"""Gradient-based meta-learning on torch.func: MAML, first-order MAML, MAML++ step learning rates,
Meta-SGD and ANIL, plus Reptile.

- MAML: Finn, Abbeel & Levine, ICML 2017 (first_order=true: FOMAML).
- MAML++ learned per-step, per-tensor inner learning rates: Antoniou, Edwards & Storkey, ICLR 2019.
- Meta-SGD learned per-parameter inner learning rates: Li, Zhou, Chen & Li, 2017.
- ANIL (only the head adapts in the inner loop): Raghu, Raghu, Bengio & Vinyals, ICLR 2020.
- Proto-MAML head initialisation: Triantafillou et al., ICLR 2020.
- Reptile: Nichol, Achiam & Schulman, 2018.

The inner loop is `functional.adapt`, a pure function over a parameter dict evaluated with
`torch.func.functional_call`: no module copies, no fast-weight attributes. The encoder's parameters
that do not adapt are read from the module and differentiated once, in the outer backward.

Dropout and normalisation: during meta-training the encoder is in train mode for both loops (dropout
active in the inner and the outer loop, as in the original MAML code); at evaluation it is in eval
mode. Transformers use LayerNorm, which has no running statistics, so adaptation never updates
buffers; a BatchNorm encoder would use the statistics of the batch at hand (transductive, as MAML did).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.data.sampler import Episode
from metarun.errors import ConfigError, check_choice
from metarun.learners.base import Learner, StepOutput, accuracy
from metarun.learners.functional import adapt, linear_head, proto_head

ADAPT = ("all", "head", "top_k")
HEAD_INIT = ("proto", "zeros")
HEAD = ("head.weight", "head.bias")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def adapted_encoder_names(encoder: nn.Module, mode: str, top_k: int) -> list[str]:
    """Names of encoder parameters adapted in the inner loop: all, none (head) or the top-k layers."""
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    if mode == "all":
        return trainable
    if mode == "head":
        return []
    layers = sorted({int(part) for n in trainable for prev, part in zip(n.split(".")[:-1], n.split(".")[1:])
                     if prev == "layer" and part.isdigit()})
    if not layers:
        raise ConfigError("learner.adapt=top_k needs an encoder with numbered layers (`...layer.<i>...`); "
                          "use learner.adapt=all or head.")
    keep = {str(i) for i in layers[-top_k:]} if top_k > 0 else set()
    return [n for n in trainable if any(f"layer.{i}." in n for i in keep)]


class MAML(Learner):
    """MAML and its variants over an encoder and a per-task linear head."""

    name = "maml"

    def __init__(
        self,
        encoder: nn.Module,
        inner_steps: int = 1,
        test_inner_steps: int | None = None,
        inner_lr: float = 0.01,
        first_order: bool = False,
        adapt: str = "all",
        top_k: int = 1,
        head_init: str = "proto",
        learn_step_lrs: bool = False,
        per_param_lr: bool = False,
        freeze_encoder: bool = False,
        vmap_tasks: bool = False,
    ):
        super().__init__()
        test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        _check(isinstance(inner_steps, int) and inner_steps >= 0, f"learner.inner_steps must be >= 0, got {inner_steps}.")
        _check(isinstance(test_inner_steps, int) and test_inner_steps >= 0,
               f"learner.test_inner_steps must be >= 0, got {test_inner_steps}.")
        _check(inner_lr > 0, f"learner.inner_lr must be positive, got {inner_lr}.")
        check_choice("learner.adapt", adapt, ADAPT)
        check_choice("learner.head_init", head_init, HEAD_INIT)
        _check(not (learn_step_lrs and per_param_lr), "choose one of learner.learn_step_lrs (MAML++) and learner.per_param_lr (Meta-SGD).")
        self.encoder = encoder
        if freeze_encoder:
            encoder.requires_grad_(False)
        self.inner_steps, self.test_inner_steps, self.first_order = inner_steps, test_inner_steps, first_order
        self.head_init, self.vmap_tasks = head_init, vmap_tasks
        self.enc_names = adapted_encoder_names(encoder, adapt, top_k)
        self.names = [f"encoder.{n}" for n in self.enc_names] + list(HEAD)
        # Under a zero-initialised head the encoder's first inner gradient is exactly zero (and so is
        # its derivative, so skipping it is exact for second order too).
        self._zero_first = tuple(f"encoder.{n}" for n in self.enc_names) if head_init == "zeros" else ()
        # The encoder is only run at test time, with fixed weights, when nothing in it adapts:
        # evaluation can then cache features.
        self.feature_eval = not self.enc_names
        d = encoder.out_dim
        shapes = {f"encoder.{n}": p.shape for n, p in encoder.named_parameters()}
        shapes.update({"head.weight": torch.Size([1, d]), "head.bias": torch.Size([1])})  # broadcast over classes
        if per_param_lr:
            self.inner_lrs = nn.ParameterList([nn.Parameter(torch.full(shapes[n], float(inner_lr))) for n in self.names])
        elif learn_step_lrs:
            steps = max(inner_steps, test_inner_steps, 1)
            self.inner_lrs = nn.Parameter(torch.full((steps, len(self.names)), float(inner_lr)))
        else:
            self.inner_lrs = None
        self.per_param_lr, self.inner_lr = per_param_lr, float(inner_lr)
        if vmap_tasks and hasattr(encoder, "tokenize") and self.enc_names:
            raise ConfigError(
                "learner.vmap_tasks=true cannot batch tasks through a Hugging Face transformer whose weights "
                "adapt (inputs differ in length per task); use learner.vmap_tasks=false (the default), or "
                "learner=anil, whose head-only inner loop is cheap."
            )
        if not first_order and self.enc_names:
            self._use_double_backward_attention()

    def _use_double_backward_attention(self) -> None:
        model = getattr(self.encoder, "model", None)
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if impl is None or impl == "eager":
            return
        if impl != "sdpa":
            raise ConfigError(
                f"second-order MAML differentiates attention twice, which the {impl!r} attention kernel cannot "
                f"do; set learner.first_order=true, use learner=anil, or encoder.attn_implementation=eager."
            )
        model.set_attn_implementation("eager")  # fused SDPA kernels (flash, mem-efficient) lack double backward

    # -- pieces of the pure inner loop ------------------------------------------------------------
    def _lr_at(self, step: int) -> dict[str, torch.Tensor | float]:
        if self.inner_lrs is None:
            return {n: self.inner_lr for n in self.names}
        if self.per_param_lr:
            return dict(zip(self.names, self.inner_lrs))
        row = self.inner_lrs[min(step, len(self.inner_lrs) - 1)]
        return {n: row[i] for i, n in enumerate(self.names)}

    def _features(self, params: dict, inputs) -> torch.Tensor:
        enc = {n[len("encoder."):]: params[n] for n in self.names if n.startswith("encoder.")}
        return functional_call(self.encoder, enc, (inputs,)) if enc else self.encoder(inputs)

    def _init_head(self, support_feats: torch.Tensor | None, labels: torch.Tensor, n_way: int):
        if self.head_init == "proto":
            return proto_head(support_feats, labels, n_way)
        ref = support_feats if support_feats is not None else next(self.encoder.parameters())
        return ref.new_zeros(n_way, self.encoder.out_dim), ref.new_zeros(n_way)

    def _adapt_and_predict(self, support, support_labels, query, n_way: int, steps: int, first_order: bool,
                           precomputed: tuple | None = None, func_grad: bool = False) -> torch.Tensor:
        """Adapt on the support set, return query logits (N*Q, N). `precomputed` = (support, query)
        features when only the head adapts (they are computed once, outside the inner loop)."""
        params = {n: p for n, p in self.named_parameters() if n in self.names}
        if precomputed:
            s_feats = precomputed[0]
        elif self.head_init == "zeros" and self.enc_names:
            s_feats = None  # the inner loss recomputes the features; a zero head needs only their width
        else:
            s_feats = self._features(params, support)
        w, b = self._init_head(s_feats, support_labels, n_way)
        params.update({"head.weight": w, "head.bias": b})

        def support_loss(p):
            # (N*K, D) features: recomputed from the adapted encoder weights, or fixed (head-only)
            feats = self._features(p, support) if self.enc_names else s_feats
            return F.cross_entropy(linear_head(feats, p["head.weight"], p["head.bias"]), support_labels)

        fast = adapt(support_loss, params, self.names, steps, self._lr_at, first_order, func_grad, self._zero_first)
        q_feats = precomputed[1] if precomputed else self._features(fast, query)
        return linear_head(q_feats, fast["head.weight"], fast["head.bias"])

    # -- the learner contract ---------------------------------------------------------------------
    def training_loss(self, episode: Episode) -> StepOutput:
        logits = self._adapt_and_predict(episode.support, episode.support_labels, episode.query, episode.n_way,
                                         self.inner_steps, self.first_order)
        loss = F.cross_entropy(logits, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.query_labels)})

    def training_loss_tasks(self, episodes: list[Episode]) -> StepOutput:
        """All tasks of a meta-batch at once (inputs must be same-shaped tensors); the meta-gradient
        equals that of the sequential path. Encoders with `forward_batched` run every task in one set
        of batched matrix products; others go through torch.func.vmap."""
        if not all(isinstance(e.support, torch.Tensor) for e in episodes):
            raise ConfigError("learner.vmap_tasks=true needs feature tensors as inputs; use learner.vmap_tasks=false.")
        n_way = episodes[0].n_way
        stack = lambda key: torch.stack([getattr(e, key) for e in episodes])  # noqa: E731  (T, ...) per field
        xs, ys, xq, yq = stack("support"), stack("support_labels"), stack("query"), stack("query_labels")
        if hasattr(self.encoder, "forward_batched"):
            logits = self._batched_adapt_and_predict(xs, ys, xq, n_way)  # (T, N*Q, N)
            loss = F.cross_entropy(logits.flatten(0, 1), yq.flatten())
            return StepOutput(loss, {"acc": accuracy(logits.detach().flatten(0, 1), yq.flatten())})

        def task(xs, ys, xq, yq):
            logits = self._adapt_and_predict(xs, ys, xq, n_way, self.inner_steps, self.first_order, func_grad=True)
            return F.cross_entropy(logits, yq), (logits.argmax(-1) == yq).float().mean()

        losses, accs = torch.func.vmap(task, randomness="different")(xs, ys, xq, yq)
        return StepOutput(losses.mean(), {"acc": accs.mean().item()})

    def _batched_adapt_and_predict(self, xs, ys, xq, n_way: int) -> torch.Tensor:
        """T tasks in one pass: every parameter is expanded (a view, no copy) to (T, ...), so the
        gradient of the summed support losses w.r.t. the expanded tensor is each task's own gradient.
        (T, N*K, D), (T, N*K), (T, N*Q, D) -> (T, N*Q, N)."""
        t = xs.shape[0]
        params = {f"encoder.{n}": p.expand(t, *p.shape) for n, p in self.encoder.named_parameters()}
        encode = lambda p, x: self.encoder.forward_batched({n[8:]: v for n, v in p.items() if n.startswith("encoder.")}, x)  # noqa: E731
        s_feats = encode(params, xs) if self.head_init == "proto" or not self.enc_names else None  # (T, N*K, H)
        if self.head_init == "proto":
            w, b = proto_head(s_feats, ys, n_way)  # (T, N, H), (T, N)
        else:
            w, b = xs.new_zeros(t, n_way, self.encoder.out_dim), xs.new_zeros(t, n_way)
        params.update({"head.weight": w, "head.bias": b})
        head = lambda f, p: torch.baddbmm(p["head.bias"].unsqueeze(1), f, p["head.weight"].transpose(1, 2))  # noqa: E731

        def support_loss(p):  # sum over tasks of each task's mean loss
            feats = encode(p, xs) if self.enc_names else s_feats
            return F.cross_entropy(head(feats, p).flatten(0, 1), ys.flatten()) * t

        fast = adapt(support_loss, params, self.names, self.inner_steps, self._lr_at, self.first_order,
                     zero_first=self._zero_first)
        return head(encode(fast, xq), fast)

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.enable_grad():  # test-time adaptation needs gradients; meta-parameters are untouched
            return self._adapt_and_predict(episode.support, episode.support_labels, episode.query, episode.n_way,
                                           self.test_inner_steps, first_order=True).detach()

    def embed(self, batch) -> torch.Tensor:
        return self.encoder(batch)

    def predict_from_features(self, support, support_labels, query, n_way):
        with torch.inference_mode(False), torch.enable_grad():
            s, q = support.clone(), query.clone()  # leave inference mode: the head adapts with torch.func.grad
            return self._adapt_and_predict(None, support_labels.clone(), None, n_way, self.test_inner_steps,
                                           first_order=True, precomputed=(s, q)).detach()


class Reptile(MAML):
    """Reptile (Nichol et al. 2018): adapt a copy of the adapted parameters with SGD on the task, then
    move the meta-parameters towards it. The outer optimiser receives the pseudo-gradient theta - phi."""

    name = "reptile"

    def __init__(self, encoder: nn.Module, **kwargs):
        super().__init__(encoder, **kwargs)
        _check(bool(self.enc_names), "learner=reptile moves encoder weights towards adapted ones, so some must "
               "adapt: set learner.adapt=all or top_k, and learner.freeze_encoder=false.")
        _check(not self.vmap_tasks, "learner=reptile runs tasks in sequence; set learner.vmap_tasks=false.")

    def training_loss(self, episode: Episode) -> StepOutput:
        meta = {n: p for n, p in self.named_parameters() if n in self.names}
        x = _concat(episode.support, episode.query)
        y = torch.cat([episode.support_labels, episode.query_labels])
        with torch.no_grad():
            w, b = self._init_head(self._features(meta, episode.support), episode.support_labels, episode.n_way)
        fast = {n: p.detach().clone().requires_grad_() for n, p in meta.items()}
        fast.update({"head.weight": w.detach().requires_grad_(), "head.bias": b.detach().requires_grad_()})

        def task_loss(p):
            return F.cross_entropy(linear_head(self._features(p, x), p["head.weight"], p["head.bias"]), y)

        fast = adapt(task_loss, fast, self.names, self.inner_steps, self._lr_at, first_order=True,
                     zero_first=self._zero_first)
        with torch.no_grad():
            logits = linear_head(self._features(fast, episode.query), fast["head.weight"], fast["head.bias"])
            query_loss = F.cross_entropy(logits, episode.query_labels)
        # d/dtheta of sum(theta * (theta - phi)) = theta - phi; its value is replaced by the query loss.
        surrogate = sum((p * (p.detach() - fast[n].detach())).sum() for n, p in meta.items())
        loss = surrogate - surrogate.detach() + query_loss
        return StepOutput(loss, {"acc": accuracy(logits, episode.query_labels)})


def _concat(a, b):
    if isinstance(a, dict):
        length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
        pad = lambda t, n: F.pad(t, (0, n - t.shape[1]))  # noqa: E731  (pad id 0 / mask 0 on the right)
        return {k: torch.cat([pad(a[k], length), pad(b[k], length)]) for k in a if a[k].dim() == 2} | \
               {k: torch.cat([a[k], b[k]]) for k in a if a[k].dim() == 1}
    return torch.cat([a, b])

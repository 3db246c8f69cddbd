"""Gradient-based meta-learning on torch.func: MAML, first-order MAML, MAML++ step learning rates,
Meta-SGD and ANIL, plus Reptile.

- MAML: Finn, Abbeel & Levine, ICML 2017 (first_order=true: FOMAML).
- MAML++ learned per-step, per-tensor inner learning rates (step_size=per_step): Antoniou, Edwards &
  Storkey, ICLR 2019.
- Meta-SGD learned per-parameter inner learning rates (step_size=per_param): Li, Zhou, Chen & Li, 2017.
- ANIL (only the head adapts in the inner loop): Raghu, Raghu, Bengio & Vinyals, ICLR 2020.
- Proto-MAML head initialisation: Triantafillou et al., ICLR 2020.
- Low-rank inner loops (adapt=lora: rank-r deltas of the top layers' linear weights adapt, their
  down-projections are meta-learned): learners/gradient/low_rank.py.
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

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_choice, check_int, check_number
from metarun.learners.base import Learner, StepOutput, accuracy
from metarun.learners.functional import adapt, linear_head, proto_head, sgd
from metarun.learners.gradient.low_rank import BERT_TARGETS, LowRankDeltas, check_top_k
from metarun.models.base import Encoder

ADAPT = ("all", "head", "top_k", "lora")
HEAD_INIT = ("proto", "zeros")
STEP_SIZES = ("scalar", "per_step", "per_param")
HEAD = ("head.weight", "head.bias")


def adapted_encoder_names(encoder: Encoder, mode: str, top_k: int) -> list[str]:
    """Names of encoder parameters adapted in the inner loop: all, none (head) or the top-k
    transformer layers."""
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    if mode == "all":
        return trainable
    if mode == "head":
        return []
    if not encoder.transformer:
        raise ConfigError(f"learner.adapt=top_k adapts the top transformer layers, but encoder={encoder.name} has "
                          f"none; use learner.adapt=all or head.")
    check_top_k(encoder, top_k, "top_k")
    top = {id(p) for layer in list(encoder.transformer_layers())[-top_k:] for p in layer.parameters()}
    return [n for n, p in encoder.named_parameters() if p.requires_grad and id(p) in top]


class InnerLoopPolicy(nn.Module):
    """What the inner loop adapts and how large its steps are; the variants of MAML differ only here.

    - `names`: the adapted tensors (`encoder.<...>` and the head): all of them (MAML), the head alone
      (ANIL) or the top-k layers and the head.
    - `step_size`: `scalar`, one fixed inner_lr (MAML, ANIL); `per_step`, a learned lr for every step
      and tensor (MAML++); `per_param`, a learned lr for every element (Meta-SGD).
    - `zero_first`: tensors whose first inner gradient is exactly zero (the encoder below a
      zero-initialised head: dL/dfeatures = dL/dlogits @ W = 0, and so is its derivative), skipped at
      step 0.
    """

    def __init__(self, names: list[str], shapes: dict[str, torch.Size], inner_lr: float, step_size: str,
                 steps: int, zero_first: tuple[str, ...] = ()):
        super().__init__()
        self.names, self.step_size, self.inner_lr, self.zero_first = names, step_size, float(inner_lr), zero_first
        if step_size == "per_param":
            self.lrs = nn.ParameterList([nn.Parameter(torch.full(shapes[n], self.inner_lr)) for n in names])
        elif step_size == "per_step":
            self.lrs = nn.Parameter(torch.full((max(steps, 1), len(names)), self.inner_lr))
        else:
            self.lrs = None

    def updater(self):
        """The update `functional.adapt` applies at each inner step (stateless for SGD)."""
        return sgd(self.lr_at)

    def lr_at(self, step: int) -> dict[str, torch.Tensor | float]:
        if self.step_size == "scalar":
            return {n: self.inner_lr for n in self.names}
        if self.step_size == "per_param":
            return dict(zip(self.names, self.lrs))
        row = self.lrs[min(step, len(self.lrs) - 1)]
        return {n: row[i] for i, n in enumerate(self.names)}


class MAML(Learner):
    """MAML and its variants (an `InnerLoopPolicy`) over an encoder and a per-task linear head.

    One driver, `_adapt_and_predict`, runs the inner loop for one task or for T tasks at once (leading
    task dimension): tasks one at a time; under torch.func.vmap; through an encoder's
    `forward_batched` (feature inputs); or, when only the head adapts, on the features of every task
    of the meta-batch encoded in one padded forward (`vmap_tasks=true` with a text encoder).
    """

    def __init__(
        self,
        encoder: Encoder,
        inner_steps: int = 1,
        test_inner_steps: int | None = None,
        inner_lr: float = 0.01,
        first_order: bool = False,
        adapt: str = "all",
        top_k: int = 1,
        head_init: str = "proto",
        step_size: str = "scalar",
        freeze_encoder: bool = False,
        vmap_tasks: bool = False,
        lora_rank: int = 4,
        lora_targets: Sequence[str] = BERT_TARGETS,
    ):
        super().__init__()
        test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        check_int("learner.inner_steps", inner_steps, 0)
        check_int("learner.test_inner_steps", test_inner_steps, 0)
        check_number("learner.inner_lr", inner_lr, 0, low_open=True)
        check_choice("learner.adapt", adapt, ADAPT)
        check_choice("learner.head_init", head_init, HEAD_INIT)
        check_choice("learner.step_size", step_size, STEP_SIZES)
        self.encoder = encoder
        if freeze_encoder:
            encoder.requires_grad_(False)
        self.inner_steps, self.test_inner_steps, self.first_order = inner_steps, test_inner_steps, first_order
        self.head_init, self.batch_tasks = head_init, vmap_tasks
        # adapt=lora: the inner loop adapts low-rank deltas of the top_k layers, not encoder tensors
        self.lora = LowRankDeltas(encoder, top_k, lora_targets, lora_rank) if adapt == "lora" else None
        self.enc_names = adapted_encoder_names(encoder, "head" if self.lora else adapt, top_k)
        self.adapts_encoder = bool(self.enc_names) or self.lora is not None
        # adapt=top_k or lora: the layers below the adapted ones do not change in the inner loop, so
        # the support set's forward through them runs once per task (`_split_encode`)
        n_layers = len(encoder.transformer_layers()) if adapt in ("top_k", "lora") else 0
        self.split_at = n_layers - top_k if 0 < top_k < n_layers else 0
        names = [f"encoder.{n}" for n in self.enc_names] + (self.lora.names if self.lora else []) + list(HEAD)
        shapes = {f"encoder.{n}": p.shape for n, p in encoder.named_parameters()} | (self.lora.shapes if self.lora
                                                                                       else {})
        # broadcast over classes
        shapes.update({"head.weight": torch.Size([1, encoder.out_dim]), "head.bias": torch.Size([1])})
        zero_first = tuple(names[:-2]) if head_init == "zeros" else ()
        self.policy = InnerLoopPolicy(
            names, shapes, inner_lr, step_size, max(inner_steps, test_inner_steps), zero_first
        )
        # The encoder is only run at test time, with fixed weights, when nothing in it adapts:
        # evaluation can then cache features.
        self.feature_eval = not self.adapts_encoder
        if vmap_tasks and encoder.tokenize is not None and self.adapts_encoder:
            raise ConfigError(
                "learner.vmap_tasks=true cannot batch tasks through a text encoder whose weights adapt (inputs "
                "differ in length per task); use learner.vmap_tasks=false (the default), or learner=anil, whose "
                "head-only inner loop batches the tasks of a meta-batch."
            )
        if not first_order and self.adapts_encoder:
            encoder.use_double_backward_attention()

    # -- the one inner-loop driver ----------------------------------------------------------------
    def _encoder_tensors(self, params: dict) -> dict[str, torch.Tensor]:
        """The encoder tensors `params` replaces (the adapted ones)."""
        return {n[len("encoder.") :]: params[n] for n in params if n.startswith("encoder.")}

    def _deltas(self, params: dict):
        """The context in which the encoder adds the low-rank deltas in `params` (adapt=lora)."""
        return self.lora.applied(params) if self.lora is not None else nullcontext()

    def _encode(self, params: dict, inputs) -> torch.Tensor:
        """Features under the adapted encoder tensors in `params` (the rest read from the module)."""
        enc = self._encoder_tensors(params)
        with self._deltas(params):
            return functional_call(self.encoder, enc, (inputs,)) if enc else self.encoder(inputs)

    def _split_encode(self, support: dict):
        """`_encode` that reads the support set's hidden states entering the first adapted layer,
        computed once (with their graph: the layers below are meta-learned in the outer loop, and a
        Proto-MAML head starts from these features) instead of at every inner step."""
        states, mask = self.encoder.layer_inputs(support, self.split_at)

        def encode(params: dict, inputs) -> torch.Tensor:
            if inputs is not support:  # the query: one full forward under the adapted tensors
                return self._encode(params, inputs)
            with self._deltas(params):
                return functional_call(self.encoder, self._encoder_tensors(params), (inputs,),
                                       {"from_layer": (self.split_at, states, mask)})

        return encode

    def _init_head(self, support_feats: torch.Tensor | None, labels: torch.Tensor, n_way: int):
        """(..., N*K, D) support features -> head (..., N, D), (..., N); leading dims are tasks."""
        if self.head_init == "proto":
            return proto_head(support_feats, labels, n_way)
        ref = support_feats if support_feats is not None else next(self.encoder.parameters())
        lead = labels.shape[:-1]
        return ref.new_zeros(*lead, n_way, self.encoder.out_dim), ref.new_zeros(*lead, n_way)

    def _adapt_and_predict(
        self,
        support,
        support_labels,
        query,
        n_way: int,
        steps: int,
        first_order: bool,
        params: dict | None = None,
        encode=None,
        features: tuple | None = None,
        func_grad: bool = False,
    ) -> torch.Tensor:
        """Adapt on the support set, return query logits (..., N*Q, N); leading dims are tasks.

        `params`: the encoder tensors the inner loop starts from (default: the adapted meta-parameters;
        expanded to (T, ...) for `forward_batched`), read by `encode(params, inputs)` (default
        `_encode`). `features` = (support, query) features when only the head adapts (computed once,
        outside the inner loop); `func_grad`: differentiate with torch.func.grad (inside vmap)."""
        if encode is None and features is None and self.split_at and isinstance(support, dict):
            encode = self._split_encode(support)
        encode = encode or self._encode
        if params is None:
            params = {n: p for n, p in self.named_parameters() if n in self.policy.names}
            params |= self.lora.start() if self.lora is not None else {}
        if features is not None:
            s_feats = features[0]
        elif self.head_init == "zeros" and self.adapts_encoder:
            s_feats = None  # the inner loss recomputes the features; a zero head needs only their width
        else:
            s_feats = encode(params, support)
        w, b = self._init_head(s_feats, support_labels, n_way)
        params = {**params, "head.weight": w, "head.bias": b}
        n_tasks = support_labels[..., 0].numel()  # 1 for a single task

        def support_loss(p):  # the sum over tasks of each task's mean loss
            feats = encode(p, support) if self.adapts_encoder else s_feats  # recomputed, or fixed (head-only)
            logits = linear_head(feats, p["head.weight"], p["head.bias"])
            return F.cross_entropy(logits.flatten(0, -2), support_labels.flatten()) * n_tasks

        policy = self.policy
        fast = adapt(
            support_loss, params, policy.names, steps, policy.updater(), first_order, func_grad, policy.zero_first
        )
        q_feats = features[1] if features is not None else encode(fast, query)
        return linear_head(q_feats, fast["head.weight"], fast["head.bias"])

    # -- the learner contract ---------------------------------------------------------------------
    def training_loss(self, episode: Episode) -> StepOutput:
        logits = self._adapt_and_predict(
            episode.support, episode.support_labels, episode.query, episode.n_way, self.inner_steps, self.first_order
        )
        loss = F.cross_entropy(logits, episode.query_labels)
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.query_labels)})

    def training_loss_tasks(self, episodes: list[Episode]) -> StepOutput:
        """All tasks of a meta-batch at once (same N, K and Q); the meta-gradient equals that of the
        sequential path. Text encoders (head-only inner loop): every task's sentences in one padded
        forward. Encoders with `batched_params`: one set of batched matrix products. Others:
        torch.func.vmap."""
        if not self.batch_tasks:
            return super().training_loss_tasks(episodes)
        n_way = episodes[0].n_way
        ys, yq = torch.stack([e.support_labels for e in episodes]), torch.stack([e.query_labels for e in episodes])
        if self.encoder.tokenize is not None:  # text: only the head adapts (checked at start-up)
            logits = self._adapt_and_predict(
                None, ys, None, n_way, self.inner_steps, self.first_order, features=self._encode_tasks(episodes)
            )
        else:
            xs, xq = torch.stack([e.support for e in episodes]), torch.stack([e.query for e in episodes])
            if self.encoder.batched_params:
                t = len(episodes)
                params = {f"encoder.{n}": p.expand(t, *p.shape) for n, p in self.encoder.named_parameters()}
                encode = (
                    lambda p, x: self.encoder.forward_batched(  # noqa: E731
                        {n[len("encoder.") :]: v for n, v in p.items() if n.startswith("encoder.")}, x
                    )
                )
                logits = self._adapt_and_predict(xs, ys, xq, n_way, self.inner_steps, self.first_order, params, encode)
            else:
                task = lambda xs, ys, xq: self._adapt_and_predict(  # noqa: E731
                    xs, ys, xq, n_way, self.inner_steps, self.first_order, func_grad=True
                )
                logits = torch.func.vmap(task, randomness="different")(xs, ys, xq)
        loss = F.cross_entropy(logits.flatten(0, 1), yq.flatten())  # (T, N*Q, N): the mean over tasks
        return StepOutput(loss, {"acc": accuracy(logits.detach().flatten(0, 1), yq.flatten())})

    def _encode_tasks(self, episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every task's support and query sentences in one padded encoder forward:
        -> (T, N*K, D) support and (T, N*Q, D) query features."""
        batches = [b for e in episodes for b in (e.support, e.query)]
        feats = self.encoder(_concat(*batches)).split([len(b["input_ids"]) for b in batches])
        return torch.stack(feats[0::2]), torch.stack(feats[1::2])

    def predict(self, episode: Episode) -> torch.Tensor:
        with torch.enable_grad():  # test-time adaptation needs gradients; meta-parameters are untouched
            return self._adapt_and_predict(
                episode.support,
                episode.support_labels,
                episode.query,
                episode.n_way,
                self.test_inner_steps,
                first_order=True,
            ).detach()

    def predict_from_features(self, support, support_labels, query, n_way, context=None):
        with torch.inference_mode(False), torch.enable_grad():
            s, q = support.clone(), query.clone()  # leave inference mode: the head adapts with autograd
            return self._adapt_and_predict(
                None, support_labels.clone(), None, n_way, self.test_inner_steps, first_order=True, features=(s, q)
            ).detach()


class Reptile(MAML):
    """Reptile (Nichol et al. 2018): adapt a copy of the adapted parameters with SGD on the task, then
    move the meta-parameters towards it. The outer optimiser receives the pseudo-gradient theta - phi."""

    def __init__(self, encoder: Encoder, **kwargs):
        super().__init__(encoder, **kwargs)
        if not self.enc_names:
            raise ConfigError(
                "learner=reptile moves encoder weights towards adapted ones, so some must adapt: set "
                "learner.adapt=all or top_k, and learner.freeze_encoder=false."
            )
        if self.batch_tasks:
            raise ConfigError("learner=reptile runs tasks in sequence; set learner.vmap_tasks=false.")

    def training_loss(self, episode: Episode) -> StepOutput:
        policy = self.policy
        meta = {n: p for n, p in self.named_parameters() if n in policy.names}
        x = _concat(episode.support, episode.query)
        y = torch.cat([episode.support_labels, episode.query_labels])
        with torch.no_grad():
            w, b = self._init_head(self._encode(meta, episode.support), episode.support_labels, episode.n_way)
        fast = {n: p.detach().clone().requires_grad_() for n, p in meta.items()}
        fast.update({"head.weight": w.detach().requires_grad_(), "head.bias": b.detach().requires_grad_()})

        def task_loss(p):
            return F.cross_entropy(linear_head(self._encode(p, x), p["head.weight"], p["head.bias"]), y)

        fast = adapt(
            task_loss,
            fast,
            policy.names,
            self.inner_steps,
            policy.updater(),
            first_order=True,
            zero_first=policy.zero_first,
        )
        with torch.no_grad():
            logits = linear_head(self._encode(fast, episode.query), fast["head.weight"], fast["head.bias"])
            query_loss = F.cross_entropy(logits, episode.query_labels)
        # d/dtheta of sum(theta * (theta - phi)) = theta - phi; its value is replaced by the query loss.
        surrogate = sum((p * (p.detach() - fast[n].detach())).sum() for n, p in meta.items())
        loss = surrogate - surrogate.detach() + query_loss
        return StepOutput(loss, {"acc": accuracy(logits, episode.query_labels)})


def _concat(*batches):
    """Tokenised batches (dicts of (B_i, L_i) tensors), or feature tensors, stacked along the batch,
    padded on the right to the longest L (pad id 0, mask 0)."""
    if not isinstance(batches[0], dict):
        return torch.cat(batches)
    length = max(b["input_ids"].shape[1] for b in batches)
    pad = lambda t: F.pad(t, (0, length - t.shape[1])) if t.dim() == 2 else t  # noqa: E731  (1-D: positions)
    return {k: torch.cat([pad(b[k]) for b in batches]) for k in batches[0]}

"""HyperNetworks for few-shot classification: a meta-model maps the task (its support set) to the
parameters of the model that classifies it. Two generators, one learner (`generate`):

- `head`: LEOPARD (Bansal, Jha, Munkhdalai & McCallum, EMNLP 2020). Each class's softmax weights and
  bias are generated from its support examples: an MLP over each support feature, averaged per class;
  the last output dimension is the bias. With `skip: proto` (the default) the MLP's output is added
  to the Proto-MAML head (W = 2c, b = -|c|^2), so the untrained generator, whose output layer starts
  at zero, is exactly ProtoNet; `skip: none` is LEOPARD's generator alone. `inner_steps` > 0 then
  refines the generated head with MAML's inner loop (learned per-step rates, `step_size: per_step`):
  with 0 steps a pure hypernetwork, with steps LEOPARD.
- `adapters`: a permutation-invariant set encoder reads the support set and gives a task embedding z;
  a shared generator maps (z, layer id) to a LoRA delta for each target linear layer of every
  transformer block, W' = W + B(z, l) A_l, so each episode gets its own encoder; queries are then
  classified by that encoder's prototypes (plus MAML steps on the head, if `inner_steps` > 0). The
  generator's output layer starts at zero, so the untrained hypernetwork is exactly the base encoder.
  B is generated and A_l learned per layer (random at start, as LoRA does): were both generated from a
  zero output layer, neither would receive a gradient. Unlike HyperFormer's task-ID embeddings, the
  set encoder handles tasks never seen in training.

The set encoder sees labels only through grouping: phi over each support feature, mean per class,
rho over the mean of the class summaries. An embedding of the label index would make z depend on the
episode's arbitrary label order; grouping makes it invariant to that order and to the order of shots.

Generated parameters flow through `torch.func.functional_call`; nothing is copied per episode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from metarun.errors import ConfigError, check_choice, check_int, check_number
from metarun.learners.base import encoder_and_rest
from metarun.learners.functional import prototypes, proto_head
from metarun.learners.gradient.low_rank import BERT_TARGETS, block_linears
from metarun.learners.gradient.maml import MAML
from metarun.models.base import Encoder

GENERATE = ("head", "adapters")
SKIP = ("proto", "none")


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Two layers with a zero output layer: the generated quantity starts at exactly zero."""
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class AdapterGenerator(nn.Module):
    """Set encoder + LoRA-delta generator for the `targets` linear layers of every transformer block."""

    def __init__(self, encoder: Encoder, targets: list[str], rank: int, task_dim: int, hidden: int):
        super().__init__()
        block_linears(encoder, targets)
        layers = list(encoder.transformer_layers())
        names = {id(p): n for n, p in encoder.named_parameters()}
        self.targets, self.rank, self.hidden = list(targets), rank, hidden
        # per target: the encoder's weight name in each layer, and its (out, in) shape
        self.weight_names = {t: [names[id(layer.get_submodule(t).weight)] for layer in layers] for t in targets}
        shapes = {t: layers[0].get_submodule(t).weight.shape for t in targets}
        self.phi = nn.Sequential(nn.Linear(encoder.out_dim, task_dim), nn.Tanh(), nn.Linear(task_dim, task_dim))
        self.rho = nn.Sequential(nn.Tanh(), nn.Linear(task_dim, task_dim))
        self.layer_embedding = nn.Embedding(len(layers), task_dim)
        key = lambda t: t.replace(".", "_")  # noqa: E731  (ModuleDict keys cannot hold dots)
        self.key = key
        self.generators = nn.ModuleDict({key(t): _mlp(2 * task_dim, hidden, shapes[t][0] * rank) for t in targets})
        self.down = nn.ParameterDict({key(t): nn.Parameter(torch.randn(len(layers), rank, shapes[t][1])
                                                           / shapes[t][1] ** 0.5) for t in targets})

    def task_embedding(self, support_feats: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
        """(N*K, D), (N*K,) -> (task_dim,): invariant to the order of shots and of classes."""
        return self.rho(prototypes(self.phi(support_feats), labels, n_way).mean(0))

    def deltas(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder weight name -> generated delta B(z, l) A_l."""
        n_layers = self.layer_embedding.num_embeddings
        inputs = torch.cat([z.expand(n_layers, -1), self.layer_embedding.weight], -1)  # (L, 2*task_dim)
        out = {}
        for t in self.targets:
            # readout scaled by 1/hidden: under Adam every output weight moves by up to head_lr per
            # step, so an unscaled sum over `hidden` units would move each delta `hidden` times as far
            # (within 50 steps, deltas larger than the pretrained weights: measured, val 97.8 -> 95.9)
            up = self.generators[self.key(t)](inputs).view(n_layers, -1, self.rank) / self.hidden
            delta = up @ self.down[self.key(t)]  # (L, out, in)
            out.update(zip(self.weight_names[t], delta.unbind(0)))
        return out


class HyperNet(MAML):
    """LEOPARD-style generated heads, or task-conditioned LoRA encoders (see the module docstring),
    on MAML's inner loop and learner contract."""

    def __init__(self, encoder: Encoder, generate: str = "head", inner_steps: int = 0,
                 test_inner_steps: int | None = None, inner_lr: float = 0.01, step_size: str = "per_step",
                 first_order: bool = True, adapt: str = "head", top_k: int = 1, freeze_encoder: bool = False,
                 hidden: int = 256, skip: str = "proto", rank: int = 4, task_dim: int = 128,
                 targets: list[str] | tuple[str, ...] = BERT_TARGETS, head_lr: float = 1e-3,
                 vmap_tasks: bool = False):
        check_choice("learner.generate", generate, GENERATE)
        check_choice("learner.skip", skip, SKIP)
        for opt, v in (("hidden", hidden), ("rank", rank), ("task_dim", task_dim)):
            check_int(f"learner.{opt}", v)
        if generate == "adapters" and not encoder.transformer:
            raise ConfigError(f"learner.generate=adapters generates LoRA deltas for transformer blocks, but "
                              f"encoder={encoder.name} has none; use encoder=minilm (or minilm_markers), or "
                              f"learner.generate=head.")
        if generate == "adapters" and vmap_tasks:
            raise ConfigError("learner.generate=adapters gives each task its own encoder, so tasks cannot share one "
                              "padded forward; use learner.vmap_tasks=false.")
        super().__init__(encoder, inner_steps=inner_steps, test_inner_steps=test_inner_steps, inner_lr=inner_lr,
                         first_order=first_order, adapt=adapt, top_k=top_k, step_size=step_size,
                         freeze_encoder=freeze_encoder, vmap_tasks=vmap_tasks)
        check_number("learner.head_lr", head_lr, 0, low_open=True)
        self.generate, self.skip, self.head_lr = generate, skip, head_lr
        d = encoder.out_dim
        if generate == "head":
            self.generator = _mlp(d, hidden, d + 1)
        else:
            self.generator = AdapterGenerator(encoder, list(targets), rank, task_dim, hidden)
        self.feature_eval = generate == "head" and not self.adapts_encoder

    def param_groups(self, lr: float) -> list[dict]:
        """The generator and the learned inner rates at `head_lr`, the encoder at the trainer's lr."""
        return encoder_and_rest(self, lr, self.head_lr)

    def _init_head(self, support_feats, labels, n_way):
        """The generated head: (..., N*K, D) support features -> (..., N, D) weights, (..., N) biases.
        (`adapters`: the Proto-MAML head of the task-conditioned features.)"""
        if self.generate == "adapters":
            return super()._init_head(support_feats, labels, n_way)
        out = prototypes(self.generator(support_feats), labels, n_way)  # (..., N, D+1): per-class means
        w, b = out[..., :-1], out[..., -1]
        if self.skip == "proto":
            w0, b0 = proto_head(support_feats, labels, n_way)
            w, b = w0 + w, b0 + b
        return w, b

    def _adapt_and_predict(self, support, support_labels, query, n_way, steps, first_order, params=None,
                           encode=None, features=None, func_grad=False):
        if self.generate == "head":
            return super()._adapt_and_predict(support, support_labels, query, n_way, steps, first_order, params,
                                              encode, features, func_grad)
        with torch.no_grad():  # the task is read by the base encoder; the set encoder and generator train
            base = self.encoder(support)
        deltas = self.generator.deltas(self.generator.task_embedding(base, support_labels, n_way))
        weights = dict(self.encoder.named_parameters())

        def encode(p, inputs):
            enc = self._encoder_tensors(p)  # the inner loop's adapted tensors
            conditioned = {n: enc.get(n, weights[n]) + delta for n, delta in deltas.items()}
            with self._deltas(p):  # and its low-rank deltas (adapt=lora)
                return functional_call(self.encoder, {**enc, **conditioned}, (inputs,))

        return super()._adapt_and_predict(support, support_labels, query, n_way, steps, first_order,
                                          encode=encode)

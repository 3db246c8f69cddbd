"""Optimization as a Model for Few-Shot Learning (Ravi & Larochelle, ICLR 2017): an LSTM meta-learner
that learns the inner-loop optimiser.

The meta-learner is coordinate-wise: one small two-layer network, shared by every adapted scalar,
reads that scalar's gradient and the support loss and writes its next value.

- Layer 1: an LSTM cell over the preprocessed gradient and loss (Andrychowicz et al. 2016: each input x
  becomes (log|x| / p, sign x) when |x| >= e^-p, else (-1, e^p x); p = 10), optionally with an
  embedding of which tensor the scalar belongs to (`tensor_embedding`, beyond the paper: updates can
  differ by layer and parameter type).
- Layer 2: the paper's cell whose cell state *is* the learner's parameter:
      theta_t = f_t * theta_{t-1} - i_t * grad_t,
      f_t = sigmoid(W_f [h_t, theta_{t-1}, f_{t-1}] + b_f),   i_t = sigmoid(W_i [h_t, theta_{t-1}, i_{t-1}] + b_i),
  started from the learned initial parameters (the encoder's meta-parameters; the head from the
  support prototypes, as Proto-MAML does, since an episode's labels are a random permutation and a
  fixed learned head would mean nothing). The gate biases start at b_f = `forget_bias` (f ~ 1) and
  b_i = logit(`inner_lr`), with small gate weights, so the first updates are plain SGD at `inner_lr`.

Gradient inputs are constants by default (`first_order: true`, the paper's choice): the meta-gradient
flows through the unrolled cell states and gates, not through second derivatives of the support loss.
The inner loop is MAML's (`functional.adapt` over a parameter dict with `torch.func.functional_call`);
only its update rule differs, so `adapt: head | top_k | all` work as for `maml`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metarun.errors import ConfigError, check_choice, check_int, check_number
from metarun.learners.base import encoder_and_rest
from metarun.learners.gradient.maml import MAML
from metarun.models.base import Encoder

PREPROCESS_P = 10.0


def preprocess(x: torch.Tensor, p: float = PREPROCESS_P) -> torch.Tensor:
    """Andrychowicz et al. (2016), appendix A: (M,) -> (M, 2), a scale-free encoding of x."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(1e-38).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, x.sign(), x * math.exp(p))
    return torch.stack([first, second], dim=-1)


class LSTMOptimizer(nn.Module):
    """The two-layer coordinate-wise meta-learner; `updater()` gives `functional.adapt` a fresh optimiser
    state for one inner loop (one task)."""

    def __init__(self, names: list[str], inner_lr: float, hidden_size: int = 20, forget_bias: float = 5.0,
                 tensor_embedding: int = 0, init_scale: float = 0.01):
        super().__init__()
        if not 0 < inner_lr < 1:
            raise ConfigError(f"learner.inner_lr is the initial input gate of lstm_meta, a sigmoid: it must be in "
                              f"(0, 1), got {inner_lr}.")
        check_int("learner.hidden_size", hidden_size)
        check_int("learner.tensor_embedding", tensor_embedding, 0)
        self.names, self.zero_first = names, ()
        self.embedding = nn.Embedding(len(names), tensor_embedding) if tensor_embedding else None
        self.lstm = nn.LSTMCell(4 + tensor_embedding, hidden_size)
        # gate inputs: [h (hidden_size), theta_{t-1}, gate_{t-1}]
        self.forget_weight = nn.Parameter(torch.empty(hidden_size + 2))
        self.input_weight = nn.Parameter(torch.empty(hidden_size + 2))
        self.forget_bias = nn.Parameter(torch.tensor(float(forget_bias)))
        self.input_bias = nn.Parameter(torch.tensor(math.log(inner_lr / (1 - inner_lr))))
        for w in (self.forget_weight, self.input_weight, *self.lstm.parameters()):
            nn.init.uniform_(w, -init_scale, init_scale)
        if self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -init_scale, init_scale)

    def updater(self):
        """A stateful `update(step, params, grads, loss)` for one inner loop: all adapted tensors are
        flattened into one vector of coordinates, which share the meta-learner's weights."""
        state = {}

        def update(step: int, params: dict, grads: dict, loss: torch.Tensor) -> dict:
            names = [n for n in self.names if n in grads]
            theta = torch.cat([params[n].reshape(-1) for n in names])
            grad = torch.cat([grads[n].reshape(-1) for n in names]).to(theta.dtype)
            x = torch.cat([preprocess(grad), preprocess(loss.reshape(1).to(theta.dtype)).expand(len(grad), 2)], -1)
            if not state:  # the first step of this inner loop
                zeros = theta.new_zeros(len(theta))
                state.update(hc=None, f=zeros, i=zeros)
                if self.embedding is not None:  # which tensor each coordinate belongs to, once per loop
                    state["ids"] = torch.cat([torch.full((params[n].numel(),), self.names.index(n),
                                                         device=theta.device) for n in names])
            if self.embedding is not None:
                x = torch.cat([x, self.embedding(state["ids"]).to(theta.dtype)], -1)
            h, c = self.lstm(x, state["hc"])
            f = torch.sigmoid(torch.cat([h, theta[:, None], state["f"][:, None]], -1) @ self.forget_weight
                              + self.forget_bias)
            i = torch.sigmoid(torch.cat([h, theta[:, None], state["i"][:, None]], -1) @ self.input_weight
                              + self.input_bias)
            state.update(hc=(h, c), f=f, i=i)
            new = (f * theta - i * grad).split([params[n].numel() for n in names])
            return {**params, **{n: v.view_as(params[n]) for n, v in zip(names, new)}}

        return update


ADAPT = ("all", "head", "top_k")


class LSTMMeta(MAML):
    """MAML's inner loop (what adapts: `adapt`, `top_k`; the Proto-MAML head) with the LSTM meta-learner
    as its update rule. The meta-learner trains in the outer loop at `meta_lr`; it is part of the
    state dict, so checkpoints carry it."""

    def __init__(self, encoder: Encoder, inner_steps: int = 5, test_inner_steps: int | None = None,
                 inner_lr: float = 0.1, first_order: bool = True, adapt: str = "head", top_k: int = 1,
                 head_init: str = "proto", freeze_encoder: bool = False, hidden_size: int = 20,
                 forget_bias: float = 5.0, tensor_embedding: int = 0, meta_lr: float = 1e-3):
        check_choice("learner.adapt", adapt, ADAPT)  # not maml's lora: the LSTM updates tensors, not deltas
        super().__init__(encoder, inner_steps=inner_steps, test_inner_steps=test_inner_steps, inner_lr=inner_lr,
                         first_order=first_order, adapt=adapt, top_k=top_k, head_init=head_init,
                         freeze_encoder=freeze_encoder)
        check_number("learner.meta_lr", meta_lr, 0, low_open=True)
        self.meta_lr = meta_lr
        self.policy = LSTMOptimizer(self.policy.names, inner_lr, hidden_size, forget_bias, tensor_embedding)

    def param_groups(self, lr: float) -> list[dict]:
        """The meta-learner at `meta_lr`, the encoder at the trainer's lr."""
        return encoder_and_rest(self, lr, self.meta_lr)

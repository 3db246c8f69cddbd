"""Meta-Learning with Memory-Augmented Neural Networks (Santoro, Bartunov, Botvinick, Wierstra &
Lillicrap, ICML 2016).

An LSTM controller reads an episode one item at a time: the item's features with the label of the
previous item (so the label of an item arrives one step after it, and the memory must bind content
to labels), and its previous reads. Each step it emits R read keys and R write vectors; with Least
Recently Used Access it writes each vector to a mix of the slots it read last and a least-used slot
(gate sigma(alpha); head i takes the i-th least-used slot), after wiping those least-used slots, then
reads by softmax over cosine similarities times a key strength (reads are convex combinations of
memory rows). The prediction is a linear layer over the controller state and the reads. Memory is
wiped each episode (`memory: episode`, the paper's).

How content meets its label (`binding`):
- `controller` (the paper's): the key is written as it is read, keys(h_t); the controller must carry
  item t in its LSTM state until its label arrives at t + 1 and write the two into one slot.
- `explicit` (default): read keys are keys(h_t) + P x_t, and step t writes the previous item, now
  that its label has arrived: keys'(h_t) + P x_{t-1} (P shared, so a later item finds the slot of a
  similar earlier one from the start, and h_t holds the label y_{t-1} it was given). This is the
  "separate write vector" variant of public MANN implementations, with the item carried for the
  controller. On BANKING77 and on a synthetic 5-way 1-shot task the paper's binding stayed at chance
  for 1,500-3,000 steps; explicit binding reached 98% on the synthetic task in 500 (README).
`key_strength: learned` sharpens each head's read (beta = 1 + softplus(w h + b), the NTM's content
addressing; b starts at 9, beta near 10): with 128 slots and beta = 1 (`none`, the paper's) a read
spreads almost evenly over the empty slots.

Here the support items arrive in a random order (a fixed, class-interleaved one at evaluation); then
every query takes one more step from the state after the last support item, all queries at once,
so no query sees another. The loss is the queries' cross-entropy plus, with `support_loss`, the
prediction made for each support item before its label arrives (the paper trains on every step).

`memory: persistent` adds a memory of past tasks (beyond the paper): a key-value store holding a
running mean of each meta-training class's support prototype (written in the outer loop, without
gradient, kept in checkpoints), which every step can also read by attention. At test time the
classes are new, so what it offers is how similar classes were represented.

Labels use `max_way` one-hot slots; each training episode's classes take a random subset of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_choice, check_int, check_number
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, encoder_and_rest
from metarun.learners.functional import FEATURE_NORMS, interleaved_order, normalize_episode, random_presentation

MEMORY = ("episode", "persistent")
BINDINGS = ("explicit", "controller")
KEY_STRENGTHS = ("learned", "none")


def least_used(usage: torch.Tensor, n: int) -> torch.Tensor:
    """(..., S) usage -> (..., n, S): row i is the one-hot of the i-th least-used slot (the paper's
    w^lu, one per write head, so n heads write to n different slots)."""
    idx = usage.topk(n, dim=-1, largest=False).indices  # (..., n)
    return F.one_hot(idx, usage.shape[-1]).to(usage.dtype)


def cosine_read_weights(keys: torch.Tensor, memory: torch.Tensor, strength: torch.Tensor | float = 1.0) -> torch.Tensor:
    """(..., R, W) keys, (..., S, W) memory, (..., R, 1) key strengths -> (..., R, S) read weights:
    softmax over cosine similarity times the strength."""
    return (strength * F.normalize(keys, dim=-1) @ F.normalize(memory, dim=-1).transpose(-1, -2)).softmax(-1)


class MANN(FeatureLearner):



    def __init__(self, encoder: nn.Module, train_classes: list[str], hidden: int = 200, slots: int = 128,
                 slot_width: int = 40, read_heads: int = 4, gamma: float = 0.95, max_way: int = 10,
                 memory: str = "episode", bank_momentum: float = 0.9, support_loss: bool = True,
                 feature_norm: str = "center_l2", binding: str = "explicit", key_strength: str = "learned",
                 head_lr: float | None = 1e-3):
        super().__init__()
        check_choice("learner.memory", memory, MEMORY)
        check_choice("learner.binding", binding, BINDINGS)
        check_choice("learner.key_strength", key_strength, KEY_STRENGTHS)
        self.binding = binding
        check_choice("learner.feature_norm", feature_norm, FEATURE_NORMS)
        self.feature_norm = feature_norm
        for opt, v in (("hidden", hidden), ("slots", slots), ("slot_width", slot_width), ("read_heads", read_heads),
                       ("max_way", max_way)):
            check_int(f"learner.{opt}", v)
        if read_heads > slots:
            raise ConfigError(f"learner.read_heads={read_heads} cannot exceed learner.slots={slots}.")
        check_number("learner.gamma", gamma, 0, 1)
        check_number("learner.bank_momentum", bank_momentum, 0, 1, high_open=True)
        self.encoder, self.head_lr, self.memory = encoder, head_lr, memory
        self.slots, self.width, self.heads, self.gamma, self.max_way = slots, slot_width, read_heads, gamma, max_way
        self.support_loss, self.bank_momentum = support_loss, bank_momentum
        d = encoder.out_dim
        bank_read = d if memory == "persistent" else 0
        self.controller = nn.LSTMCell(d + max_way + read_heads * slot_width + bank_read, hidden)
        self.keys = nn.Linear(hidden, read_heads * slot_width)
        self.alpha = nn.Linear(hidden, read_heads)
        if binding == "explicit":
            self.item_keys = nn.Linear(d, read_heads * slot_width, bias=False)  # P: items in read keys and writes
            self.writes = nn.Linear(hidden, read_heads * slot_width)
        self.strength = None
        if key_strength == "learned":
            self.strength = nn.Linear(hidden, read_heads)
            nn.init.constant_(self.strength.bias, 9.0)  # beta = 1 + softplus(9), about 10, at the start
        self.out = nn.Linear(hidden + read_heads * slot_width + bank_read, max_way)
        if memory == "persistent":
            self.classes = {c: i for i, c in enumerate(train_classes)}
            self.register_buffer("bank", torch.zeros(len(train_classes), d))
            self.register_buffer("bank_written", torch.zeros(len(train_classes), dtype=torch.bool))
            self.bank_query = nn.Linear(hidden, d)

    def param_groups(self, lr: float) -> list[dict]:
        return encoder_and_rest(self, lr, self.head_lr or lr)

    # -- one controller step ----------------------------------------------------------------------
    def initial_state(self, batch: int, ref: torch.Tensor) -> dict:
        z = lambda *shape: ref.new_zeros(batch, *shape)  # noqa: E731
        usage = z(self.slots)
        return {"h": z(self.controller.hidden_size), "c": z(self.controller.hidden_size),
                "memory": torch.full_like(z(self.slots, self.width), 1e-6), "read": z(self.heads * self.width),
                "bank_read": z(self.bank.shape[1]) if self.memory == "persistent" else None,
                "w_read": z(self.heads, self.slots), "usage": usage, "w_lu": least_used(usage, self.heads),
                "prev_x": None}  # explicit binding: the previous item (None before the first)

    def _read_bank(self, h: torch.Tensor) -> torch.Tensor:
        keys = self.bank[self.bank_written]
        if not len(keys):
            return h.new_zeros(len(h), self.bank.shape[1])
        return (F.normalize(self.bank_query(h), dim=-1) @ F.normalize(keys, dim=-1).T * 10).softmax(-1) @ keys

    def step(self, state: dict, x: torch.Tensor, prev_label: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """(B, D) items, (B, max_way) previous labels -> the next state and (B, max_way) logits."""
        inputs = [x, prev_label, state["read"]] + ([state["bank_read"]] if self.memory == "persistent" else [])
        h, c = self.controller(torch.cat(inputs, -1), (state["h"], state["c"]))
        shape = (-1, self.heads, self.width)
        if self.binding == "explicit":  # read by this item; write the previous one with the label just given
            keys = (self.keys(h) + self.item_keys(x)).view(shape)
            writes = None if state["prev_x"] is None else (self.writes(h) + self.item_keys(state["prev_x"])).view(shape)
        else:  # the paper's: one key, written and read
            keys = writes = self.keys(h).view(shape)  # (B, R, W)
        memory, w_write = state["memory"], torch.zeros_like(state["w_read"])
        if writes is not None:
            gate = torch.sigmoid(self.alpha(h)).unsqueeze(-1)  # (B, R, 1)
            w_write = gate * state["w_read"] + (1 - gate) * state["w_lu"]  # (B, R, S)
            wipe = state["w_lu"].amax(1)  # (B, S): the heads' least-used slots are cleared before writing
            memory = memory * (1 - wipe).unsqueeze(-1) + w_write.transpose(1, 2) @ writes
        strength = 1.0 if self.strength is None else 1 + F.softplus(self.strength(h)).unsqueeze(-1)  # (B, R, 1)
        w_read = cosine_read_weights(keys, memory, strength)  # (B, R, S), rows sum to one
        read = (w_read @ memory).flatten(1)
        usage = self.gamma * state["usage"] + w_read.sum(1) + w_write.sum(1)
        new = {"h": h, "c": c, "memory": memory, "read": read, "w_read": w_read, "usage": usage,
               "w_lu": least_used(usage, self.heads), "prev_x": x,
               "bank_read": self._read_bank(h) if self.memory == "persistent" else None}
        outs = [h, read] + ([new["bank_read"]] if self.memory == "persistent" else [])
        return new, self.out(torch.cat(outs, -1))

    # -- an episode ---------------------------------------------------------------------------------
    def run_episode(self, support, support_labels, query, slots) -> tuple[torch.Tensor, torch.Tensor]:
        """Support items in presentation order, then every query from the state after the last one.
        -> (N*K, N) logits of each support item (before its label arrives), (M, N) query logits."""
        if len(slots) > self.max_way:
            raise ConfigError(f"learner=mann reads labels as one-hot vectors over learner.max_way={self.max_way} "
                              f"slots, but this episode is {len(slots)}-way; set learner.max_way >= {len(slots)}.")
        dtype = self.out.weight.dtype
        support, query = normalize_episode(support.to(dtype), query.to(dtype), self.feature_norm)
        labels = F.one_hot(slots[support_labels], self.max_way).to(dtype)  # (N*K, max_way)
        state, prev = self.initial_state(1, support), labels.new_zeros(1, self.max_way)
        support_logits = []
        for t in range(len(support)):
            state, logits = self.step(state, support[t : t + 1], prev)
            support_logits.append(logits)
            prev = labels[t : t + 1]
        m = len(query)
        state = {k: (v.expand(m, *v.shape[1:]) if v is not None else None) for k, v in state.items()}
        _, query_logits = self.step(state, query, prev.expand(m, -1))
        return torch.cat(support_logits)[:, slots].float(), query_logits[:, slots].float()

    def predict_from_features(self, support, support_labels, query, n_way, context=None):
        order = interleaved_order(support_labels, n_way)
        slots = torch.arange(n_way, device=support_labels.device)
        return self.run_episode(support[order], support_labels[order], query, slots)[1]

    def training_loss(self, episode: Episode) -> StepOutput:
        s, q = self.embed_episode(episode)
        n, ys = episode.n_way, episode.support_labels
        if self.memory == "persistent":
            self._write_bank(s.detach(), ys, n, episode.meta.get("classes"))
        order, slots = random_presentation(len(s), n, self.max_way, s.device)
        support_logits, logits = self.run_episode(s[order], ys[order], q, slots)
        loss = F.cross_entropy(logits, episode.query_labels)
        if self.support_loss:
            loss = loss + F.cross_entropy(support_logits, ys[order])
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.query_labels)})

    @torch.no_grad()
    def _write_bank(self, support, labels, n_way, classes) -> None:
        """Running means of the episode's class prototypes in the persistent store (outer loop)."""
        if classes is None:
            raise ConfigError("learner.memory=persistent needs the class names of training episodes; this sampler "
                              "does not give them (use sampler=episodic).")
        protos = F.one_hot(labels, n_way).T.to(support.dtype) @ support / labels.bincount(minlength=n_way)[:, None]
        for c, proto in zip(classes, protos):
            i = self.classes[c]
            m = self.bank_momentum if self.bank_written[i] else 0.0
            self.bank[i] = m * self.bank[i] + (1 - m) * proto.to(self.bank.dtype)
            self.bank_written[i] = True

"""Refiners: how a prototype learner's class representations are built from what an episode offers
beyond its support set, and the one per-episode context an evaluator hands a learner.

Two kinds, chosen in two places:

- **Query refiners**, chosen by the evaluation protocol (`eval.<role>.transductive_steps`,
  `eval.<role>.rectify`): `SoftKMeans` (Ren et al. 2018) and `Rectify` (BD-CSPN, Liu et al. 2020)
  read the episode's unlabelled queries. The evaluator builds one and puts it in the `EpisodeContext`;
  training episodes never carry one.
- **Run refiners**, chosen by the run (`refiner=[name_prior]`, a config group like `objective`):
  `NamePrior` adds the class names' embeddings to every prototype, in training (where its weight may
  learn) and at test time, and classifies K = 0 episodes by the names alone. They are attached to
  the learner, so their parameters are checkpointed with it.

Learners that score queries against class prototypes (`PrototypeLearner`: ProtoNet) take both; any
other learner refuses them before training (`check_refiners`). A refiner declares what it reads
(`reads`), and the information regime of a run (results.json) is derived from those declarations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metarun.errors import ConfigError, check_int, check_number
from metarun.learners.functional import rectified_prototypes, soft_kmeans_prototypes

Scores = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (M, D), (N, D) -> (M, N) logits


class Refiner(nn.Module):
    """A refinement of class prototypes. `reads`: "queries" (the episode's unlabelled queries:
    transductive) and/or "class_names"."""

    name = "refiner"
    reads: frozenset[str] = frozenset()


class QueryRefiner(Refiner):
    """Prototypes from a support set (or a stand-in for one) and the episode's unlabelled queries."""

    reads = frozenset({"queries"})

    def prototypes(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int,
                   scores: Scores, weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """(N*K, D), (N*K,), (M, D) -> (N, D); support items weigh `weight` where the rule has weights."""
        raise NotImplementedError


class SoftKMeans(QueryRefiner):
    """`steps` of soft k-means over the queries (Ren et al. 2018): `eval.<role>.transductive_steps`."""

    name = "soft_kmeans"

    def __init__(self, steps: int):
        super().__init__()
        check_int("transductive_steps", steps, 1)
        self.steps = steps

    def prototypes(self, support, labels, query, n_way, scores, weight=1.0):
        return soft_kmeans_prototypes(support, labels, query, n_way, self.steps, scores, weight=weight)


class Rectify(QueryRefiner):
    """BD-CSPN prototype rectification with the queries (Liu, Song & Qin 2020): `eval.<role>.rectify`."""

    name = "rectify"

    def prototypes(self, support, labels, query, n_way, scores, weight=1.0):
        return rectified_prototypes(support, labels, query, n_way)


def support_prototypes(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int, scores: Scores,
                       weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The inductive rule: (weighted) class means of the support set; the queries are not read."""
    return soft_kmeans_prototypes(support, labels, query, n_way, 0, scores, weight=weight)


@dataclass
class EpisodeContext:
    """What an evaluator (or a training step) tells a learner about one episode besides its tensors:
    the class ids in label order (readable names: `Learner.class_text`), and the protocol's query
    refiner, if it lets the learner read the unlabelled queries."""

    classes: Sequence[str] | None = None
    refiner: QueryRefiner | None = None

    @property
    def reads_queries(self) -> bool:
        return self.refiner is not None


def name_text(label: str, template: str) -> str:
    """A class id as words: underscores and dots become spaces, then `template` ("{name}")."""
    return template.format(name=" ".join(label.replace("_", " ").replace(".", " ").split()))


def embed_names(learner: nn.Module, classes: Sequence[str], template: str = "{name}") -> torch.Tensor:
    """(N, D) float embeddings of the classes' readable names (`learner.class_text`, else the id as
    words) by the learner's own encoder."""
    from metarun.data.dataset import Example

    texts = [name_text(learner.class_text.get(c, c), template) for c in classes]
    batch = learner.encoder.tokenize([Example(t, c) for t, c in zip(texts, classes)])
    device = next(learner.encoder.parameters()).device
    return learner.embed({k: v.to(device) for k, v in batch.items()}).float()


class NamePrior(Refiner):
    """The class names as a prior on the prototypes (beyond ProtoNet's paper; PIE-style name
    prototypes): the name text ("card_arrival" -> "card arrival", through `template`) is embedded by
    the learner's encoder and counts as `weight` pseudo-examples, p_c = (K mean_c + w name_c) / (K + w).
    `learned`: w trains (w = softplus(.), starting at `weight`, at learning rate `lr`). w = 0 is plain
    ProtoNet, and a very large w the zero-shot classifier of names alone; K = 0 episodes (no support
    set: `eval.test.shots=[0,1,5]`) take the name embeddings as the prototypes."""

    name = "name_prior"
    reads = frozenset({"class_names"})

    def __init__(self, weight: float = 1.0, learned: bool = False, template: str = "{name}", lr: float = 1e-2):
        super().__init__()
        check_number("refiner.name_prior.weight", weight, 0)
        check_number("refiner.name_prior.lr", lr, 0, low_open=True)
        if "{name}" not in template:
            raise ConfigError(f"refiner.name_prior.template must contain {{name}}, got {template!r}; "
                              f"e.g. refiner.name_prior.template='This is about {{name}}'.")
        self.learned, self.template = bool(learned), template
        self.lr = lr if learned else None  # its own optimiser group: a scalar barely moves at a fine-tuning rate
        w = torch.tensor(float(weight))
        if learned:  # softplus^-1(w), so the weight starts at `weight`
            self.weight_raw = nn.Parameter(w + torch.log(-torch.expm1(-w)) if weight > 0 else torch.tensor(-20.0))
        else:
            self.register_buffer("_weight", w, persistent=False)  # from the config, not checkpoints
        self._memo: dict[str, torch.Tensor] = {}  # name embeddings at evaluation (cleared by train())

    @property
    def weight(self) -> torch.Tensor:
        return F.softplus(self.weight_raw) if self.learned else self._weight

    @property
    def zero_shot(self) -> bool:
        """Whether it can classify K = 0 episodes (a fixed weight of 0 is plain ProtoNet)."""
        return self.learned or float(self._weight) > 0

    def embeddings(self, learner: nn.Module, classes: Sequence[str]) -> torch.Tensor:
        """(N, D) name embeddings; memoised in eval mode, where the encoder is fixed."""
        classes = list(classes)
        if self.training:
            return embed_names(learner, classes, self.template)
        missing = list(dict.fromkeys(c for c in classes if c not in self._memo))
        if missing:
            self._memo.update(zip(missing, embed_names(learner, missing, self.template).detach()))
        return torch.stack([self._memo[c] for c in classes])

    def mix(self, protos: torch.Tensor, labels: torch.Tensor, n_way: int, names: torch.Tensor) -> torch.Tensor:
        """(N, D) prototypes with each class's name embedding as `weight` pseudo-examples."""
        shots = torch.bincount(labels, minlength=n_way).to(protos).unsqueeze(-1)  # (N, 1)
        w = self.weight.to(protos)
        return (shots * protos + w * names.to(protos)) / (shots + w)

    def train(self, mode: bool = True):
        self._memo.clear()  # the encoder may change while training
        return super().train(mode)


REFINERS = {cls.name: cls for cls in (NamePrior,)}  # the run refiners (configs/refiner/)

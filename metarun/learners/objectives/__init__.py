"""Objectives: training terms any learner whose encoder trains can take (`metarun 'objective=[mlm,supcon]'
objective.mlm.weight=0.1`). Each is one class here and one YAML file in `configs/objective/`.

An objective declares what it reads (`reads`: the episode's "features", its "text", its "class_names";
an unlabelled stream is the next reader), owns its parameters and their learning rate (`lr`; None:
the trainer's), and returns `(loss, metrics)` for one training episode. The learner base
(`Learner.training_step`) adds `weight x loss` of each to the learner's own loss, and whether a run
can train on cached features is derived from what they read: no learner handles them by hand.

    class Objective(nn.Module):
        name = "my_term"
        reads = frozenset({"features"})
        def loss(self, episode, features, learner) -> (loss, {"my_term": value})

`features` are the episode's (support, query) embeddings of the learner's own forward when the
learner hands them over (ProtoNet, Matching: same dropout masks, no second forward), else None and
the objective embeds the episode with the learner's encoder (the meta-parameters, for MAML: the term
joins the outer loss).
"""

from __future__ import annotations

import torch
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_number

Features = tuple[torch.Tensor, torch.Tensor | None]  # (support, query) embeddings; query None for flat batches


class Objective(nn.Module):
    """A weighted training term (see the module docstring)."""

    name = "objective"
    reads: frozenset[str] = frozenset({"features"})  # and "text", "class_names", "unlabelled"
    lr: float | None = None  # learning rate of its own parameters, if any (None: the trainer's)

    def __init__(self, weight: float):
        super().__init__()
        check_number(f"objective.{self.name}.weight", weight, 0, low_open=True)
        self.weight = float(weight)
        self.stream = None  # the run's unlabelled target text (UnlabelledText), for objectives that read it
        self.total_episodes = 1  # training episodes of the run: an episode's index / this is training's progress

    def use_run(self, stream, total_episodes: int) -> None:
        """Called once the run's parts are built: its unlabelled stream (None without `unlabelled=...`)
        and how many training episodes it has."""
        if "unlabelled" in self.reads and stream is None:
            raise ConfigError(f"objective={self.name} reads unlabelled target-domain text, and this run has none; give "
                              f"unlabelled=file unlabelled.path=FILE (or unlabelled=data +data@unlabelled.data=NAME).")
        self.stream, self.total_episodes = stream, max(1, int(total_episodes))

    def progress(self, episode: Episode) -> float:
        """How far training is at this episode, in [0, 1]."""
        return min(1.0, float(episode.meta.get("index", 0)) / self.total_episodes)

    def target_batch(self, learner: nn.Module, n: int) -> dict[str, torch.Tensor]:
        """`n` sentences of the unlabelled stream, tokenised by the learner's encoder, on its device."""
        batch = learner.encoder.tokenize(self.stream.draw(n))
        device = next(learner.encoder.parameters()).device
        return {k: v.to(device) for k, v in batch.items()}

    def bind(self, learner: nn.Module) -> None:
        """Called once when the run attaches it: check that the learner's encoder trains and build
        what depends on it. Errors name the option to change."""
        encoder = getattr(learner, "encoder", None)
        if encoder is None or not any(p.requires_grad for p in encoder.parameters()):
            why = "has no encoder" if encoder is None else "the encoder is frozen (encoder.freeze=true)"
            raise ConfigError(f"objective={self.name} trains the encoder, but under learner={learner.name} {why}; "
                              f"unfreeze it or leave objective={self.name} out.")

    def loss(self, episode: Episode, features: Features | None, learner: nn.Module
             ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


SOURCES = ("episode", "unlabelled", "both")  # what an objective that reads text reads it from


def episode_features(episode: Episode, features: Features | None, learner: nn.Module) -> Features:
    """The learner's features of the episode, or a fresh embedding of it."""
    if features is not None:
        return features
    return learner.embed_episode(episode)


def labelled(episode: Episode, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, D) features of the episode's labelled items and their (M,) labels: support and query,
    without none-of-the-above queries (they have no class to pull towards)."""
    support, query = features
    labels = episode.support_labels if query is None else torch.cat([episode.support_labels, episode.query_labels])
    feats = support if query is None else torch.cat([support, query])
    known = labels < episode.n_way if query is not None else torch.ones_like(labels, dtype=torch.bool)
    return feats[known].float(), labels[known]


def text_batches(episode: Episode) -> list[dict[str, torch.Tensor]]:
    """The episode's tokenised inputs, support then query."""
    if episode.encoded:
        raise ConfigError("an objective that reads text got an episode of cached features; this is a bug in how "
                          "the run chose its training inputs (please report it).")
    return [b for b in (episode.support, episode.query) if b is not None]


def build_objectives(nodes, learner: nn.Module) -> list[Objective]:
    """The objectives of the config group `objective` (a mapping name -> node), bound to `learner`."""
    from metarun.config import build, import_target

    objectives = []
    for key, node in (nodes or {}).items():
        cls = import_target(node["_target_"], "objective")
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise ConfigError(f"objective.{key}._target_={node['_target_']} is not a metarun Objective "
                              f"(metarun.learners.objectives.Objective).")
        objective = build(node, f"objective.{key}")
        objective.bind(learner)
        objectives.append(objective)
    return objectives


# the objectives, importable from the package (configs name their modules)
from metarun.learners.objectives.adversarial import Adversarial  # noqa: E402
from metarun.learners.objectives.consistency import Consistency  # noqa: E402
from metarun.learners.objectives.contrastive import (  # noqa: E402
    InstanceContrastive,
    NameContrastive,
    SupervisedContrastive,
)
from metarun.learners.objectives.masked_lm import MaskedLM  # noqa: E402
from metarun.learners.objectives.outlier import OutlierExposure  # noqa: E402

__all__ = ["Adversarial", "Consistency", "InstanceContrastive", "MaskedLM", "NameContrastive", "Objective",
           "OutlierExposure", "SupervisedContrastive", "build_objectives"]

"""The learner contract: an nn.Module that turns an episode into a loss and metrics.

Learners never step optimisers, log, move devices or write files; the trainer does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import CheckpointError


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Learner(nn.Module):
    """Base class: subclasses implement `training_loss` and `predict`; every optional capability is
    declared here with its default, so the runner and the trainer never probe with `hasattr`.

    - `name`: the config's `learner.name` (set by the runner when it builds the learner; results.json
      and run folders use it, so `learner=anil` is "anil" although its class is MAML).
    - `trains_on_classes`: the constructor takes `train_classes` (learners with a classifier over
      every training class: finetune, multitask, distill).
    - `feature_eval`: predictions depend on the encoder only through fixed embeddings (no test-time
      fine-tuning of the encoder); the learner implements `embed` and `predict_from_features`, and
      evaluation encodes each distinct sentence once and samples thousands of episodes from cached
      features.
    - `feature_train`: `training_loss` reads the text only through `embed`, so with a frozen encoder
      the runner may encode the training classes once and hand it episodes of cached features
      (`Episode.encoded`: `support` / `query` are (N*K, D) / (N*Q, D) features; `embed_episode` reads both).
    - `batch_tasks`: `training_loss_tasks` takes a whole meta-batch at once (vmap / batched inner loops);
      otherwise the trainer hands it one task at a time (one backward each, bounded memory).
    - `nota`: predicts none-of-the-above as class N; `nota_offset` is its learned offset, if any.
    - `reads_class_names`: `predict_from_features` takes `classes`, the episode's class ids in label
      order (ProtoNet's `label_prior`); evaluation passes them. The run sets `class_text`, the readable
      text of each id the data names (FewRel's relation names, `data.class_descriptions`); an id
      without one is read as itself.
    - `zero_shot`: `predict_from_features` classifies from the class names alone when the support set
      is empty (K = 0 episodes: `eval.test.shots=[0,1]`); other learners refuse K = 0 before training.
    - `transductive`: `predict_from_features` takes `transductive_steps` (refines its class
      representations with the episode's unlabelled queries: `eval.test.transductive_steps`).
    - `task_heads`: has a head per training task, scored on held-out examples by `task_accuracy`.
    - `reports`: `report(batches)` gives extra facts for results.json (distill: sizes and speeds).
    """

    name: str = "learner"
    trains_on_classes: bool = False
    feature_eval: bool = False
    feature_train: bool = False
    batch_tasks: bool = False
    nota: bool = False
    transductive: bool = False
    reads_class_names: bool = False
    zero_shot: bool = False
    task_heads: bool = False
    reports: bool = False

    def __init__(self):
        super().__init__()
        self.nota_offset: nn.Parameter | None = None  # learners with a `nota` option assign a Parameter
        self.class_text: dict[str, str] = {}  # class id -> readable name, for learners that read names

    def training_loss(self, episode: Episode) -> StepOutput:
        raise NotImplementedError

    def training_loss_tasks(self, episodes: list[Episode]) -> StepOutput:
        """The mean loss of several tasks (and their mean metrics). Learners with `batch_tasks` override
        it to run the tasks together; this default runs them one after another."""
        outs = [self.training_loss(e) for e in episodes]
        if len(outs) == 1:
            return outs[0]
        keys = {k for o in outs for k in o.metrics}
        metrics = {k: sum(float(o.metrics[k]) for o in outs if k in o.metrics) / sum(k in o.metrics for o in outs)
                   for k in keys}
        return StepOutput(torch.stack([o.loss for o in outs]).mean(), metrics)

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups; the trainer's schedule scales each group's lr. Default: one group,
        and the fresh none-of-the-above offset (if any) at NOTA_LR."""
        rest = [p for n, p in self.named_parameters() if p.requires_grad and n != "nota_offset"]
        nota = [self.nota_offset] if self.nota_offset is not None else []
        return [{"params": rest, "lr": lr}] + ([{"params": nota, "lr": max(lr, NOTA_LR)}] if nota else [])

    def predict(self, episode: Episode) -> torch.Tensor:
        """(N*Q, N) logits for the query set; must not change meta-parameters."""
        raise NotImplementedError

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch)

    def embed_episode(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N*K, D) support and (N*Q, D) query features; an `encoded` episode (cached features) already
        holds them."""
        if episode.encoded:
            return episode.support, episode.query
        return self.embed(episode.support), None if episode.query is None else self.embed(episode.query)

    def predict_from_features(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int
    ) -> torch.Tensor:
        raise NotImplementedError

    def task_accuracy(self, task: str, features: torch.Tensor, labels: list[str]) -> float:
        raise NotImplementedError

    def report(self, batches: list[dict[str, torch.Tensor]]) -> dict | None:
        return None

    # -- checkpoints: what trains is saved; frozen weights come from where they were loaded --------
    def _frozen(self) -> set[str]:
        return {
            k for k, v in self.state_dict(keep_vars=True).items() if isinstance(v, nn.Parameter) and not v.requires_grad
        }

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The state dict without frozen parameters (a frozen encoder's weights come from its package
        or seed, as the run builds it); buffers are kept."""
        frozen = self._frozen()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def _from_config(self) -> set[str]:
        """Non-persistent buffers: values the config decides, never read from a checkpoint."""
        return {
            f"{prefix}.{b}".lstrip(".") for prefix, m in self.named_modules() for b in m._non_persistent_buffers_set
        }

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a `trained_state`: everything but this learner's frozen parameters must be there. A
        value the config decides (a non-persistent buffer) that an older checkpoint saved is skipped."""
        from_config = self._from_config()
        missing, unexpected = self.load_state_dict(
            {k: v for k, v in state.items() if k not in from_config}, strict=False
        )
        absent = [k for k in missing if k not in self._frozen()]
        if absent or unexpected:
            raise CheckpointError(
                f"checkpoint does not fit this model (missing {absent[:3]}, unexpected "
                f"{unexpected[:3]}). The file was kept; use the config it was written with."
            )


class FeatureLearner(Learner):
    """A learner that predicts from fixed embeddings of support and query (metric learners, probes):
    `predict` embeds both sets and calls `predict_from_features`, and evaluation caches features."""

    feature_eval = True
    feature_train = True  # subclasses whose training_loss reads text other than through embed say False

    def predict(self, episode: Episode) -> torch.Tensor:
        support, query = self.embed_episode(episode)
        return self.predict_from_features(support, episode.support_labels, query, episode.n_way)


NOTA_LR = 1e-3


def encoder_and_rest(learner: nn.Module, lr: float, rest_lr: float) -> list[dict]:
    """Two optimiser groups: the (pretrained) encoder at the trainer's `lr`, every other trainable
    parameter (freshly initialised modules: relation scorers, generators, learned optimisers) at
    `rest_lr`, since a few hundred steps at a fine-tuning rate barely move a random module."""
    enc = [p for p in learner.encoder.parameters() if p.requires_grad]
    ids = {id(p) for p in enc}
    rest = [p for p in learner.parameters() if p.requires_grad and id(p) not in ids]
    return [g for g in ({"params": enc, "lr": lr}, {"params": rest, "lr": rest_lr}) if g["params"]]


def with_nota(logits: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(M, N) class logits -> (M, N+1): the none-of-the-above logit is the query's mean class logit
    plus a learned offset, so NOTA wins when no class stands out from the others. Relative to the
    mean, it needs no knowledge of the logits' scale (distances, log-probabilities, scores)."""
    return torch.cat([logits, logits.mean(-1, keepdim=True) + offset], dim=-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()

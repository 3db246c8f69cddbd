"""The learner contract: an nn.Module that turns an episode into a loss and metrics.

Learners never step optimisers, log, move devices or write files; the trainer does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import CheckpointError, ConfigError
from metarun.learners.functional import squared_euclidean
from metarun.learners.refiners import EpisodeContext, NamePrior, support_prototypes


@dataclass
class StepOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    features: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the episode's (support, query) embeddings
    #   of this forward, for objectives that read features (None: they embed the episode themselves)


class Learner(nn.Module):
    """Base class: subclasses implement `training_loss` and `predict`; every optional capability is
    declared here with its default, so the runner and the trainer never probe with `hasattr`.

    - `name`: the config's `learner.name` (set by the runner when it builds the learner; results.json
      and run folders use it, so `learner=anil` is "anil" although its class is MAML). Not a capability.
    - `feature_eval`: predictions depend on the encoder only through fixed embeddings (no test-time
      fine-tuning of the encoder); the learner implements `embed` and `predict_from_features`, and
      evaluation encodes each distinct sentence once and samples thousands of episodes from cached
      features.
    - `feature_train`: `training_loss` reads the text only through `embed`, so with a frozen encoder
      (and objectives that read only features) the runner may encode the training classes once and hand
      it episodes of cached features (`Episode.encoded`: `support` / `query` are (N*K, D) / (N*Q, D)
      features; `embed_episode` reads both).
    - `batch_tasks`: `training_loss_tasks` takes a whole meta-batch at once (vmap / batched inner loops);
      otherwise the trainer hands it one task at a time (one backward each, bounded memory).
    - `nota`: predicts none-of-the-above as class N; `nota_offset` is its learned offset, if any.
    - `task_heads`: has a head per training task, scored on held-out examples by `task_accuracy`.

    What is derived rather than declared: a learner whose constructor takes `train_classes` gets the
    training classes (finetune, multitask, distill, MANN); `report` returning None means no report;
    objectives (`attach`, learners/objectives/) add training terms to any learner, and refiners
    (learners/refiners.py) are taken by prototype learners (`PrototypeLearner`); the information regime
    (`uses_class_names`) follows from what those declare they read.
    """

    name: str = "learner"
    feature_eval: bool = False
    feature_train: bool = False
    batch_tasks: bool = False
    nota: bool = False
    task_heads: bool = False

    def __init__(self):
        super().__init__()
        self.nota_offset: nn.Parameter | None = None  # learners with a `nota` option assign a Parameter
        self.class_text: dict[str, str] = {}  # class id -> readable name (data's names, data.class_descriptions)
        self.objectives = nn.ModuleList()  # training terms (`attach`), each with its weight
        self.refiners = nn.ModuleList()  # run refiners (NamePrior), for prototype learners

    # -- composition: objectives and refiners the run attaches -----------------------------------
    def attach(self, objectives=(), refiners=()) -> "Learner":
        """Add the run's objectives (each already bound to this learner) and refiners."""
        if refiners:
            raise ConfigError(f"refiner={','.join(r.name for r in refiners)} refines class prototypes, which "
                              f"learner={self.name} does not build; use learner=protonet, or leave refiner out.")
        self.objectives.extend(objectives)
        return self

    @property
    def uses_class_names(self) -> bool:
        """Whether anything of this learner reads class names (in training or at test time)."""
        return any("class_names" in m.reads for m in (*self.objectives, *self.refiners))

    @property
    def trains_on_text(self) -> bool:
        """Whether training reads text beyond what `embed` makes of it (the learner or an objective)."""
        return not self.feature_train or any("text" in o.reads for o in self.objectives)

    # -- training ------------------------------------------------------------------------------
    def training_loss(self, episode: Episode) -> StepOutput:
        raise NotImplementedError

    def training_loss_tasks(self, episodes: list[Episode]) -> StepOutput:
        """The mean loss of several tasks (and their mean metrics). Learners with `batch_tasks` override
        it to run the tasks together; this default runs them one after another."""
        return mean_step([self.training_loss(e) for e in episodes])

    def training_step(self, episodes: list[Episode]) -> StepOutput:
        """What the trainer calls: the learner's loss of `episodes` (one task, or a whole meta-batch for
        `batch_tasks` learners) plus each objective's `weight x term`."""
        if self.batch_tasks:
            return self._with_objectives(self.training_loss_tasks(episodes), episodes)
        return mean_step([self._with_objectives(self.training_loss(e), [e]) for e in episodes])

    def _with_objectives(self, out: StepOutput, episodes: list[Episode]) -> StepOutput:
        if not len(self.objectives):
            return out
        loss, metrics = out.loss, dict(out.metrics)
        for objective in self.objectives:
            terms = [objective.loss(e, out.features if len(episodes) == 1 else None, self) for e in episodes]
            value = torch.stack([t for t, _ in terms]).mean() if len(terms) > 1 else terms[0][0]
            loss = loss + objective.weight * value
            for k in terms[0][1]:
                metrics[k] = sum(float(m[k]) for _, m in terms) / len(terms)
        return StepOutput(loss, metrics, out.features)

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups of the learner's own parameters; the trainer's schedule scales each
        group's lr. Default: one group, and the fresh none-of-the-above offset (if any) at NOTA_LR."""
        rest = [p for n, p in self.named_parameters() if p.requires_grad and n != "nota_offset"]
        return [{"params": rest, "lr": lr}] + nota_group(self, lr)

    def optimizer_groups(self, lr: float) -> list[dict]:
        """What the trainer optimises: `param_groups`, with every objective and refiner that has a
        learning rate of its own (`lr`: a fresh masked-LM head, a learned name weight) in a group of its
        own at max(lr, its lr)."""
        own = [m for m in (*self.objectives, *self.refiners) if m.lr is not None]
        ids = {id(p) for m in own for p in m.parameters()}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in self.param_groups(lr)]
        groups += [{"params": [p for p in m.parameters() if p.requires_grad], "lr": max(lr, m.lr)} for m in own]
        return [g for g in groups if g["params"]]

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

    def predict_from_features(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                              n_way: int, context: EpisodeContext | None = None) -> torch.Tensor:
        """(N*K, D), (N*K,), (N*Q, D) -> (N*Q, N) logits; `context`: the episode's class ids and the
        protocol's query refiner (prototype learners read them; others ignore them)."""
        raise NotImplementedError

    def logits(self, query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """(M, D), (N, D) -> (M, N): how this learner scores items against class prototypes (objectives
        that build prototypes use it): negative squared Euclidean distance unless a learner says otherwise."""
        return -squared_euclidean(query.float(), protos.float())

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

    def _legacy_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint written before objectives and refiners (ProtoNet's `label_weight_raw`,
        `_label_weight`, `mlm_head.*`) with those keys where this learner keeps them now; a fixed
        name weight saved by an older version is dropped (the config decides it)."""
        where = {type(m).__name__: f"{kind}.{i}." for kind in ("objectives", "refiners")
                 for i, m in enumerate(getattr(self, kind))}
        moved = {"label_weight_raw": where.get("NamePrior", "") + "weight_raw",
                 **{k: where.get("MaskedLM", "") + "head." + k[len("mlm_head."):]
                    for k in state if k.startswith("mlm_head.")}}
        return {moved.get(k, k): v for k, v in state.items() if k != "_label_weight"}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a `trained_state`: everything but this learner's frozen parameters must be there. A
        value the config decides (a non-persistent buffer) that an older checkpoint saved is skipped."""
        state = self._legacy_keys(state)
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
        return self.predict_from_features(support, episode.support_labels, query, episode.n_way,
                                          EpisodeContext(episode.meta.get("classes")))


class PrototypeLearner(FeatureLearner):
    """A feature learner that scores queries against class prototypes, and so takes refiners: the
    protocol's query refiner (`EpisodeContext.refiner`: soft k-means, BD-CSPN) and the run's
    (`refiner=[name_prior]`), which it applies in `class_prototypes`."""

    def attach(self, objectives=(), refiners=()) -> "Learner":
        self.objectives.extend(objectives)
        self.refiners.extend(refiners)
        return self

    @property
    def name_prior(self) -> NamePrior | None:
        return next((r for r in self.refiners if isinstance(r, NamePrior)), None)

    @property
    def zero_shot(self) -> bool:
        """Whether it classifies K = 0 episodes (the class names alone)."""
        return self.name_prior is not None and self.name_prior.zero_shot

    def class_prototypes(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, n_way: int,
                         context: EpisodeContext | None) -> torch.Tensor:
        """(N*K, D), (N*K,), (M, D) -> (N, D): the support means, or the protocol's query refiner's
        prototypes, then the run's name prior; K = 0 episodes start from the names, each weighing the
        prior's weight in pseudo-examples."""
        context = context or EpisodeContext()
        rule = context.refiner.prototypes if context.refiner is not None else support_prototypes
        prior = self.name_prior
        if prior is not None and context.classes is None:
            raise ConfigError("refiner=name_prior needs the episode's class names; this evaluation does not give "
                              "them (use eval=episodic or fewrel_official).")
        if len(support) == 0:  # K = 0: the names alone stand in for the support set
            if not self.zero_shot:
                raise ConfigError("K = 0 episodes (eval.*.shots containing 0) classify by the class names alone, "
                                  "which needs refiner=name_prior with refiner.name_prior.weight > 0 or "
                                  "refiner.name_prior.learned=true; give shots >= 1.")
            names = prior.embeddings(self, list(context.classes)).to(query)
            return rule(names, torch.arange(n_way, device=query.device), query, n_way, self.logits,
                        weight=prior.weight.to(query))
        protos = rule(support.float(), labels, query, n_way, self.logits)
        if prior is not None:
            protos = prior.mix(protos, labels, n_way, prior.embeddings(self, list(context.classes)))
        return protos


def mean_step(outs: list[StepOutput]) -> StepOutput:
    """Several tasks' outputs as one: the mean loss and mean metrics (one task: itself)."""
    if len(outs) == 1:
        return outs[0]
    keys = {k for o in outs for k in o.metrics}
    metrics = {k: sum(float(o.metrics[k]) for o in outs if k in o.metrics) / sum(k in o.metrics for o in outs)
               for k in keys}
    return StepOutput(torch.stack([o.loss for o in outs]).mean(), metrics)


# The none-of-the-above offset is one scalar in the units of the learner's logits, which run from about
# 1 (log-probabilities) to tens (squared distances between sentence embeddings). Adam moves a parameter
# by about its lr per step whatever the gradient's size, so at 1e-3 it moved 0.09 in 150 steps on
# CLINC150 and the NOTA class never won an argmax; at 0.1 it can cross a few logit units in tens of steps.
NOTA_LR = 0.1


def nota_group(learner: nn.Module, lr: float) -> list[dict]:
    """The optimiser group of the learner's none-of-the-above offset, if it has one (else none)."""
    offset = getattr(learner, "nota_offset", None)
    return [{"params": [offset], "lr": max(lr, NOTA_LR)}] if offset is not None else []


def encoder_and_rest(learner: nn.Module, lr: float, rest_lr: float) -> list[dict]:
    """Optimiser groups: the (pretrained) encoder at the trainer's `lr`, every other trainable
    parameter (freshly initialised modules: relation scorers, generators, learned optimisers) at
    `rest_lr`, since a few hundred steps at a fine-tuning rate barely move a random module, and the
    none-of-the-above offset (if any) at NOTA_LR."""
    enc = [p for p in learner.encoder.parameters() if p.requires_grad]
    offset = getattr(learner, "nota_offset", None)
    ids = {id(p) for p in enc} | {id(offset)}
    rest = [p for p in learner.parameters() if p.requires_grad and id(p) not in ids]
    groups = [g for g in ({"params": enc, "lr": lr}, {"params": rest, "lr": rest_lr}) if g["params"]]
    return groups + nota_group(learner, lr)


def with_nota(logits: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(M, N) class logits -> (M, N+1): the none-of-the-above logit is the query's mean class logit
    plus a learned offset, so NOTA wins when no class stands out from the others. Relative to the
    mean, it needs no knowledge of the logits' scale (distances, log-probabilities, scores)."""
    return torch.cat([logits, logits.mean(-1, keepdim=True) + offset], dim=-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()

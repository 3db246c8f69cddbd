"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is the mean of its support embeddings; a query's logits are negative squared Euclidean
distances to the prototypes (or scaled cosine similarities). At evaluation the prototypes can be
refined with the episode's unlabelled queries (`eval.test.transductive_steps`: soft k-means, Ren et
al. 2018).

`label_prior` (beyond the paper) uses the class names as a prior on the prototypes: the name text
("card_arrival" -> "card arrival", through `label_template`) is embedded by the same encoder and
counts as `label_weight` pseudo-examples, p_c = (K mean_c + w name_c) / (K + w). `add` keeps w
fixed; `learned` trains it (w = softplus(.), starting at `label_weight`). w = 0 is plain ProtoNet, and
a very large w gives the zero-shot classifier of names alone on the same episodes; K = 0 episodes (no
support set: `eval.test.shots=[0,1,5]`) take the name embeddings as the prototypes.

`contrastive_weight` adds ContrastNet's supervised contrastive loss over the episode's support and
query features (Chen et al. 2022), and `instance_weight` its unsupervised instance term: every text
encoded a second time, with another dropout mask, and each sentence's two views contrasted against
the other sentences (SimCSE's, so no paraphrase model is needed offline). Both train the encoder, so
they need text episodes (a frozen encoder has nothing for them to move).

`consistency_weight` adds ProtAugment's unsupervised episodes with offline augmentations in place of
its paraphraser (learners/metric/consistency.py): `consistency_views` augmented copies (token deletion,
swap, insertion and replacement by nearest token embeddings, span cutoff: `consistency_augment`, at
`consistency_strength`) of `consistency_sentences` of the episode's utterances form one prototype
each, and the originals must be classified to their own. `mlm_weight` adds masked-language-model
steps on the episode's utterances (models/masked_lm.py). `name_contrastive_weight` adds a
name-utterance contrastive term: each query's cosine similarities to its episode's class-name
embeddings over `temperature`, cross-entropy against its class (it reads the class names, in training).

`support_tuning_steps` > 0 fine-tunes a copy of the encoder's top `support_tuning_layers` blocks on
each test episode's support set before classifying it (learners/metric/support_tuning.py); predictions then
depend on the episode, so evaluation encodes each episode's text (no cached features).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.augment import AUGMENTATIONS
from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_choice, check_int, check_number
from metarun.learners.base import FeatureLearner, StepOutput, accuracy, with_nota
from metarun.learners.functional import (
    cosine_similarity,
    name_contrastive,
    rectified_prototypes,
    soft_kmeans_prototypes,
    squared_euclidean,
    supervised_contrastive,
)
from metarun.learners.metric.consistency import AugmentedViews
from metarun.learners.metric.support_tuning import LOSSES as TUNING_LOSSES
from metarun.learners.metric.support_tuning import tuned_copy
from metarun.models.masked_lm import MaskedLMHead

DISTANCES = ("euclidean", "cosine")
LABEL_PRIORS = ("none", "add", "learned")


def name_text(label: str, template: str) -> str:
    """A class id as words: underscores and dots become spaces, then `template` ("{name}")."""
    return template.format(name=" ".join(label.replace("_", " ").replace(".", " ").split()))


class ProtoNet(FeatureLearner):

    transductive = True  # predict_from_features takes transductive_steps

    def __init__(self, encoder: nn.Module, distance: str = "euclidean", scale: float = 1.0, learn_scale: bool = False,
                 nota: bool = False, label_prior: str = "none", label_weight: float = 1.0,
                 label_template: str = "{name}", contrastive_weight: float = 0.0, instance_weight: float = 0.0,
                 temperature: float = 0.1, support_tuning_steps: int = 0, support_tuning_lr: float = 1e-4,
                 support_tuning_layers: int = 1, support_tuning_loss: str = "proto", mlm_weight: float = 0.0,
                 mlm_probability: float = 0.15, consistency_weight: float = 0.0, consistency_views: int = 2,
                 consistency_sentences: int = 10, consistency_strength: float = 0.1,
                 consistency_augment: Sequence[str] = AUGMENTATIONS, name_contrastive_weight: float = 0.0):
        super().__init__()
        check_choice("learner.support_tuning_loss", support_tuning_loss, TUNING_LOSSES)
        check_int("learner.support_tuning_steps", support_tuning_steps, 0)
        check_int("learner.support_tuning_layers", support_tuning_layers, 1)
        self.tuning = {"steps": support_tuning_steps, "lr": support_tuning_lr, "layers": support_tuning_layers,
                       "loss": support_tuning_loss}
        if support_tuning_steps:
            encoder.transformer_layers()  # a ConfigError naming the encoders that have layers to tune
            self.feature_eval = False  # each test episode gets its own encoder
        if contrastive_weight < 0 or instance_weight < 0 or temperature <= 0:
            raise ConfigError(f"learner.contrastive_weight and learner.instance_weight must be >= 0 and "
                              f"learner.temperature > 0, got {contrastive_weight}, {instance_weight}, {temperature}.")
        self.contrastive_weight, self.instance_weight, self.temperature = (
            contrastive_weight,
            instance_weight,
            temperature,
        )
        if instance_weight > 0:
            self.feature_train = False  # the second dropout view reads the text again
        check_number("learner.mlm_weight", mlm_weight, 0)
        check_number("learner.mlm_probability", mlm_probability, 0, low_open=True, high=1)
        self.mlm_weight, self.mlm_probability, self.mlm_head = mlm_weight, mlm_probability, None
        if mlm_weight > 0:  # masked-language-model steps on the episode's (training) utterances
            if not getattr(encoder, "transformer", False) or not hasattr(encoder, "hidden_states"):
                raise ConfigError(f"learner.mlm_weight={mlm_weight} adds masked-language-model steps, which need a "
                                  f"transformer encoder (encoder=minilm or tiny), not encoder="
                                  f"{getattr(encoder, 'name', type(encoder).__name__)}.")
            if not any(p.requires_grad for p in encoder.parameters()):
                raise ConfigError(f"learner.mlm_weight={mlm_weight} trains the encoder on masked tokens, but the "
                                  f"encoder is frozen (encoder.freeze=true); unfreeze it or set learner.mlm_weight=0.")
            self.mlm_head = MaskedLMHead(encoder)
            self.feature_train = False  # it reads the tokens, not only the features
        check_number("learner.consistency_weight", consistency_weight, 0)
        self.consistency_weight, self.consistency = consistency_weight, None
        if consistency_weight > 0:  # augmented views of the episode's utterances classify their originals
            self.consistency = AugmentedViews(encoder, list(consistency_augment), consistency_views,
                                              consistency_sentences, consistency_strength)
            self.feature_train = False  # the views are new text
        check_choice("learner.label_prior", label_prior, LABEL_PRIORS)
        if label_weight < 0 or "{name}" not in label_template:
            raise ConfigError(
                f"learner.label_weight must be >= 0 and learner.label_template must contain {{name}}, got "
                f"{label_weight} and {label_template!r}."
            )
        self.label_prior, self.label_template = label_prior, label_template
        check_number("learner.name_contrastive_weight", name_contrastive_weight, 0)
        self.name_contrastive_weight = name_contrastive_weight  # each query against its episode's name embeddings
        self.reads_class_names = label_prior != "none" or name_contrastive_weight > 0
        self.zero_shot = label_prior != "none" and (label_prior == "learned" or label_weight > 0)
        w = torch.tensor(float(label_weight))
        if label_prior == "learned":  # softplus^-1(w), so the weight starts at label_weight
            self.label_weight_raw = nn.Parameter(
                w + torch.log(-torch.expm1(-w)) if label_weight > 0 else torch.tensor(-20.0)
            )
        else:
            self.register_buffer("_label_weight", w, persistent=False)  # from the config, not checkpoints
        self._names: dict[str, torch.Tensor] = {}  # name embeddings at evaluation (cleared by train())
        self.nota = nota
        self.nota_offset = nn.Parameter(torch.zeros(())) if nota else None
        check_choice("learner.distance", distance, DISTANCES)
        check_number("learner.scale", scale, 0, low_open=True)
        self.encoder, self.distance = encoder, distance
        log_scale = torch.tensor(float(scale)).log()
        self.log_scale = nn.Parameter(log_scale) if learn_scale else None
        if not learn_scale:
            self.register_buffer("_log_scale", log_scale)

    def predict_from_features(
        self, support, support_labels, query, n_way, transductive_steps: int = 0, classes: list[str] | None = None,
        rectify: bool = False,
    ):
        """(N*K, D), (N*K,), (N*Q, D) -> (N*Q, N) logits (N+1 with `nota`); `transductive_steps` of
        soft k-means move the prototypes towards the queries first, or `rectify` (BD-CSPN) rectifies
        them with the queries; `classes` (the episode's class names, in label order) feed `label_prior`."""
        query = query.float()
        if self.label_prior != "none" and classes is None:
            raise ConfigError("learner.label_prior needs the episode's class names; this evaluation does not give "
                              "them (use eval=episodic or fewrel_official).")
        if len(support) == 0:  # K = 0: the names alone
            protos = self.zero_shot_prototypes(query, n_way, classes, transductive_steps, rectify)
        elif rectify:
            protos = rectified_prototypes(support.float(), support_labels, query, n_way)
        else:
            protos = soft_kmeans_prototypes(support.float(), support_labels, query, n_way, transductive_steps,
                                            self.logits)
        if self.label_prior != "none" and len(support):
            protos = self.with_label_prior(protos, support_labels, n_way, classes)
        logits = self.logits(query, protos)
        return with_nota(logits, self.nota_offset) if self.nota else logits

    def predict(self, episode: Episode) -> torch.Tensor:
        names = self._class_names(episode)
        if self.tuning["steps"] and not self.training and not episode.encoded:
            encoder = tuned_copy(self.encoder, episode.support, episode.support_labels, episode.n_way, **self.tuning)
            with torch.no_grad():
                support, query = encoder(episode.support), encoder(episode.query)
        else:
            support, query = self.embed_episode(episode)
        return self.predict_from_features(support, episode.support_labels, query, episode.n_way, **names)

    def param_groups(self, lr: float) -> list[dict]:
        """The default groups, with a learned label weight at 1e-2 (a scalar started at label_weight
        would barely move at an encoder's fine-tuning rate) and the masked-LM head at 1e-3."""
        groups = super().param_groups(lr)
        if self.label_prior == "learned":
            for g in groups:
                g["params"] = [p for p in g["params"] if p is not self.label_weight_raw]
            groups.append({"params": [self.label_weight_raw], "lr": max(lr, 1e-2)})
        if self.mlm_head is not None:  # a fresh head (its decoder is the encoder's embedding table) at 1e-3
            head = {id(p) for p in self.mlm_head.parameters()}
            for g in groups:
                g["params"] = [p for p in g["params"] if id(p) not in head]
            groups.append({"params": list(self.mlm_head.parameters()), "lr": max(lr, 1e-3)})
        return [g for g in groups if g["params"]]

    def _class_names(self, episode: Episode) -> dict:
        """predict_from_features' `classes` keyword, where the label prior reads them."""
        return {"classes": episode.meta.get("classes")} if self.reads_class_names else {}

    @property
    def label_weight(self) -> torch.Tensor:
        return F.softplus(self.label_weight_raw) if self.label_prior == "learned" else self._label_weight

    def with_label_prior(self, protos, support_labels, n_way, classes) -> torch.Tensor:
        """Prototypes with each class's name embedding as `label_weight` pseudo-examples."""
        names = self.name_embeddings(list(classes)).to(protos)
        shots = torch.bincount(support_labels, minlength=n_way).to(protos).unsqueeze(-1)  # (N, 1)
        w = self.label_weight.to(protos)
        return (shots * protos + w * names) / (shots + w)

    def zero_shot_prototypes(self, query, n_way, classes, transductive_steps: int, rectify: bool) -> torch.Tensor:
        """K = 0 episodes: the class-name embeddings are the prototypes. Transductively they stand in for
        the support set: `transductive_steps` of soft k-means from them, each name weighing `label_weight`
        pseudo-examples (as in the K > 0 prior), or BD-CSPN rectification with them as the support."""
        if not self.zero_shot:
            raise ConfigError("K = 0 episodes (eval.*.shots containing 0) classify by the class names alone, "
                              "which needs learner.label_prior=add or learned with learner.label_weight > 0; give "
                              "shots >= 1.")
        names = self.name_embeddings(list(classes)).to(query)
        labels = torch.arange(n_way, device=query.device)
        if rectify:
            return rectified_prototypes(names, labels, query, n_way)
        return soft_kmeans_prototypes(names, labels, query, n_way, transductive_steps, self.logits,
                                      weight=self.label_weight.to(query))

    def name_embeddings(self, classes: list[str]) -> torch.Tensor:
        """(N, D) embeddings of the class names; memoised in eval mode, where the encoder is fixed."""
        from metarun.data.dataset import Example

        missing = [c for c in classes if c not in self._names] if not self.training else classes
        if missing:
            texts = [name_text(self.class_text.get(c, c), self.label_template) for c in missing]
            batch = self.encoder.tokenize([Example(t, c) for t, c in zip(texts, missing)])
            device = next(self.encoder.parameters()).device
            feats = self.embed({k: v.to(device) for k, v in batch.items()}).float()
            if self.training:
                return feats
            self._names.update({c: f for c, f in zip(missing, feats.detach())})
        return torch.stack([self._names[c] for c in classes])

    def train(self, mode: bool = True):
        self._names.clear()  # the encoder may change while training
        return super().train(mode)

    def logits(self, query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        scale = (self.log_scale if self.log_scale is not None else self._log_scale).exp()
        if self.distance == "euclidean":
            return -scale * squared_euclidean(query, protos)
        return scale * cosine_similarity(query, protos)

    def training_loss(self, episode: Episode) -> StepOutput:
        support, query = self.embed_episode(episode)
        logits = self.predict_from_features(
            support, episode.support_labels, query, episode.n_way, **self._class_names(episode)
        )
        loss = F.cross_entropy(logits, episode.query_labels)
        metrics = {"acc": accuracy(logits.detach(), episode.query_labels)}
        if self.contrastive_weight > 0:
            labels = torch.cat([episode.support_labels, episode.query_labels])
            known = labels < episode.n_way  # none-of-the-above queries have no class to pull towards
            supcon = supervised_contrastive(torch.cat([support, query])[known].float(), labels[known], self.temperature)
            loss = loss + self.contrastive_weight * supcon
            metrics["supcon"] = supcon.item()
        if self.instance_weight > 0:
            first = torch.cat([support, query]).float()
            second = torch.cat([self.embed(episode.support), self.embed(episode.query)]).float()  # new dropout masks
            views = torch.cat([first, second])
            ids = torch.arange(len(first), device=first.device).repeat(2)  # a sentence's two views are positives
            instance = supervised_contrastive(views, ids, self.temperature)
            loss = loss + self.instance_weight * instance
            metrics["instance"] = instance.item()
        if self.name_contrastive_weight > 0:
            classes = episode.meta.get("classes")
            if classes is None:
                raise ConfigError("learner.name_contrastive_weight needs the episode's class names, and these "
                                  "training episodes carry none (episodes built outside metarun's samplers); "
                                  "set it to 0.")
            known = episode.query_labels < episode.n_way
            names = self.name_embeddings(list(classes)[: episode.n_way]).float()
            to_names = name_contrastive(query[known].float(), names, episode.query_labels[known], self.temperature)
            loss = loss + self.name_contrastive_weight * to_names
            metrics["names"] = to_names.item()
        if self.consistency is not None:
            originals = torch.cat([support, query])
            consistency = self.consistency.loss([episode.support, episode.query], originals, self.embed, self.logits)
            loss = loss + self.consistency_weight * consistency
            metrics["consistency"] = consistency.item()
        if self.mlm_head is not None:
            mlm = self.mlm_head.loss([episode.support, episode.query], self.mlm_probability)
            loss = loss + self.mlm_weight * mlm
            metrics["mlm"] = mlm.item()
        return StepOutput(loss, metrics)

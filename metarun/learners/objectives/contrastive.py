"""Contrastive objectives: ContrastNet's supervised and instance terms (Chen et al., AAAI 2022) and a
name-utterance term."""

from __future__ import annotations

import torch

from metarun.errors import ConfigError, check_number
from metarun.learners.functional import name_contrastive, supervised_contrastive
from metarun.learners.objectives import Objective, episode_features, labelled, text_batches
from metarun.learners.refiners import embed_names


class _Temperature(Objective):
    def __init__(self, weight: float, temperature: float = 0.1):
        super().__init__(weight)
        check_number(f"objective.{self.name}.temperature", temperature, 0, low_open=True)
        self.temperature = float(temperature)


class SupervisedContrastive(_Temperature):
    """ContrastNet's supervised contrastive loss over the episode's support and query features (Khosla
    et al. 2020, L_out): items of one class pull together, others apart."""

    name = "supcon"

    def loss(self, episode, features, learner):
        feats, labels = labelled(episode, episode_features(episode, features, learner))
        value = supervised_contrastive(feats, labels, self.temperature)
        return value, {self.name: value.item()}


class InstanceContrastive(_Temperature):
    """ContrastNet's unsupervised instance term: every text encoded a second time with another dropout
    mask, and each sentence's two views contrasted against the other sentences (SimCSE's, so no
    paraphrase model is needed offline). Reads the text (the second view)."""

    name = "instance"
    reads = frozenset({"features", "text"})

    def loss(self, episode, features, learner):
        support, query = episode_features(episode, features, learner)
        first = support if query is None else torch.cat([support, query])
        second = torch.cat([learner.embed(b) for b in text_batches(episode)])  # new dropout masks
        views = torch.cat([first.float(), second.float()])
        ids = torch.arange(len(first), device=first.device).repeat(2)  # a sentence's two views are positives
        value = supervised_contrastive(views, ids, self.temperature)
        return value, {self.name: value.item()}


class NameContrastive(_Temperature):
    """Name-utterance contrastive term: each query's cosine similarities to its episode's class-name
    embeddings over `temperature`, cross-entropy against its class. Reads the class names, so its runs
    are of the "names" regime."""

    name = "names"
    reads = frozenset({"features", "class_names"})

    def __init__(self, weight: float, temperature: float = 0.1, template: str = "{name}"):
        super().__init__(weight, temperature)
        self.template = template

    def loss(self, episode, features, learner):
        classes = episode.meta.get("classes")
        if classes is None:
            raise ConfigError("objective=names needs the episode's class names, and these training episodes carry "
                              "none (episodes built outside metarun's samplers); leave objective=names out.")
        _, query = episode_features(episode, features, learner)
        if query is None:
            raise ConfigError("objective=names scores an episode's queries against its class names; supervised "
                              "batches (sampler=batches) have no queries. Use an episodic learner or leave it out.")
        known = episode.query_labels < episode.n_way
        names = embed_names(learner, list(classes)[: episode.n_way], self.template)
        value = name_contrastive(query[known].float(), names, episode.query_labels[known], self.temperature)
        return value, {self.name: value.item()}

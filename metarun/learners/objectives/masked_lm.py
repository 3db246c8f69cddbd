"""Masked-language-model steps on the training episode's utterances (task-adaptive pre-training
interleaved with meta-training; models/masked_lm.py has BERT's recipe and head)."""

from __future__ import annotations

from metarun.errors import ConfigError, check_choice, check_number
from metarun.learners.objectives import SOURCES, Objective, text_batches
from metarun.models.masked_lm import MaskedLMHead


class MaskedLM(Objective):
    """BERT's masked-LM loss on the episode's (training) utterances: `probability` of the real tokens
    chosen, 80/10/10. Its head (a fresh transform and bias; the decoder is the encoder's embedding
    table) trains at `lr`. `source`: the episode's utterances, the run's unlabelled target text
    (`unlabelled`: task-adaptive pre-training on the target domain, as many sentences as the episode
    has), or `both`."""

    name = "mlm"
    reads = frozenset({"text"})

    def __init__(self, weight: float, probability: float = 0.15, lr: float = 1e-3, source: str = "episode"):
        super().__init__(weight)
        check_number("objective.mlm.probability", probability, 0, low_open=True, high=1)
        check_number("objective.mlm.lr", lr, 0, low_open=True)
        check_choice("objective.mlm.source", source, SOURCES)
        self.probability, self.lr, self.head, self.source = probability, lr, None, source
        self.reads = frozenset({"text"} | ({"unlabelled"} if source != "episode" else set()))

    def bind(self, learner) -> None:
        encoder = getattr(learner, "encoder", None)
        if not getattr(encoder, "transformer", False) or not hasattr(encoder, "hidden_states"):
            name = getattr(encoder, "name", type(encoder).__name__)
            raise ConfigError(f"objective=mlm adds masked-language-model steps, which need a transformer encoder "
                              f"(encoder=minilm or tiny), not encoder={name}.")
        super().bind(learner)
        self.head = MaskedLMHead(encoder)

    def loss(self, episode, features, learner):
        batches = text_batches(episode)
        if self.source != "episode":
            target = [self.target_batch(learner, sum(len(b["input_ids"]) for b in batches))]
            batches = target if self.source == "unlabelled" else batches + target
        value = self.head.loss(batches, self.probability)
        return value, {self.name: value.item()}

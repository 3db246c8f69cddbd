"""Unsupervised consistency on unlabelled utterances (`objective=consistency`), ProtAugment's
unsupervised episodes (Dopierre et al. 2021) with offline augmentations in place of its paraphraser:
`sentences` utterances of the training episode, read without their labels, each its own class;
`views` augmented copies of each (data/augment.py) form its prototype, and the originals, as
queries, must be classified to their own prototype (cross-entropy over the `sentences` classes,
scored as the learner scores queries). Only training episodes reach it, so it never reads a
validation or test utterance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metarun.data.augment import AUGMENTATIONS, TokenNeighbours, augment
from metarun.data.tokenize import MARKERS, first_position
from metarun.errors import ConfigError, check_choice
from metarun.learners.objectives import SOURCES, Objective, episode_features, text_batches


class AugmentedViews:
    """Augmented copies of tokenised sentences, for a transformer encoder with a Hugging Face tokenizer."""

    def __init__(self, encoder, augmentations: Sequence[str], views: int, sentences: int, strength: float):
        bad = [a for a in augmentations if a not in AUGMENTATIONS]
        if not augmentations or bad:
            raise ConfigError(f"objective.consistency.augment={list(augmentations)}: give a non-empty list of "
                              f"{', '.join(AUGMENTATIONS)}{f' ({bad[0]!r} is none of them)' if bad else ''}.")
        if views < 1 or sentences < 2 or not 0 < strength < 1:
            raise ConfigError(f"objective.consistency.views must be >= 1, objective.consistency.sentences >= 2 "
                              f"and objective.consistency.strength in (0, 1); got {views}, {sentences}, {strength}.")
        tok = getattr(encoder, "hf_tokenizer", None)
        if tok is None or tok.cls_token_id is None:
            raise ConfigError(f"objective=consistency augments token ids, which needs a BERT-style transformer "
                              f"encoder (encoder=minilm or tiny), not encoder="
                              f"{getattr(encoder, 'name', type(encoder).__name__)}.")
        if not any(p.requires_grad for p in encoder.parameters()):
            raise ConfigError("objective=consistency trains the encoder on augmented views, but the encoder is "
                              "frozen (encoder.freeze=true); unfreeze it or leave objective=consistency out.")
        self.augmentations, self.views, self.sentences, self.strength = list(augmentations), views, sentences, strength
        self.cls, self.sep, self.pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
        self.max_length = getattr(encoder, "max_length", 512)
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        excluded = set(tok.all_special_ids) | {i for i, t in enumerate(vocab) if t.startswith("[")}
        self.neighbours = TokenNeighbours(encoder.model.get_input_embeddings().weight, sorted(excluded))
        # relation instances pooled at their entity markers: a view keeps every marker (replacement never
        # picks one: they are excluded above), and carries their positions as the tokenizer's batches do
        marked = getattr(encoder, "pooling", None) == "entity_start"
        self.markers = tok.convert_tokens_to_ids(list(MARKERS)) if marked else None

    @staticmethod
    def content(batches: Sequence[dict[str, torch.Tensor]]) -> list[list[int]]:
        """Each sentence's tokens without [CLS], [SEP] and padding, batch after batch."""
        return [ids[mask.bool()].tolist()[1:-1] or ids[mask.bool()].tolist()
                for batch in batches for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]

    def views_of(self, rows: list[list[int]], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """`views` augmented copies of every row (row 0's first, then row 1's ...), each by an
        augmentation drawn from the list, as one padded batch."""
        seqs = []
        for tokens in rows:
            for _ in range(self.views):
                for _attempt in range(3 if self.markers else 1):
                    kind = self.augmentations[int(rng.integers(len(self.augmentations)))]
                    new = augment(tokens, kind, rng, self.strength, self.neighbours)[: self.max_length - 2]
                    if not self.markers or all(new.count(m) == tokens.count(m) for m in self.markers):
                        break
                else:  # three augmentations in a row cut a marker: this view is the original
                    new = tokens[: self.max_length - 2]
                seqs.append([self.cls, *new, self.sep])
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [self.pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        if self.markers:
            batch["head_pos"] = first_position(ids, self.markers[0])  # [E1]
            batch["tail_pos"] = first_position(ids, self.markers[2])  # [E2]
        return batch

    def loss(self, batches: Sequence[dict[str, torch.Tensor]], originals: torch.Tensor,
             embed: Callable[[dict], torch.Tensor], score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
             ) -> torch.Tensor:
        """The consistency loss of `sentences` rows drawn from `batches` (the global torch RNG draws
        them and seeds the augmentations, so a resumed run repeats them), with `originals` the features
        of every row of `batches` in order."""
        rows = self.content(batches)
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        pick = rng.choice(len(rows), size=min(self.sentences, len(rows)), replace=False)
        device = originals.device
        views = embed({k: v.to(device) for k, v in self.views_of([rows[i] for i in pick], rng).items()}).float()
        protos = views.view(len(pick), self.views, -1).mean(1)
        logits = score(originals[torch.as_tensor(pick, device=device)].float(), protos)
        return F.cross_entropy(logits, torch.arange(len(pick), device=device))


class Consistency(Objective):
    """ProtAugment's unsupervised episodes with offline augmentations: `views` augmented copies
    (`augment`, at `strength`) of `sentences` of the episode's utterances form one prototype each, and
    the originals, scored as the learner scores queries against prototypes (`Learner.logits`), must be
    classified to their own. `source: unlabelled` builds them from the run's unlabelled target text
    instead (the data-augmentation route to domain adaptation); `both` from the two together."""

    name = "consistency"
    reads = frozenset({"features", "text"})

    def __init__(self, weight: float, views: int = 2, sentences: int = 10, strength: float = 0.1,
                 augment: Sequence[str] = AUGMENTATIONS, source: str = "episode"):
        super().__init__(weight)
        check_choice("objective.consistency.source", source, SOURCES)
        self.settings, self.source = (list(augment), views, sentences, strength), source
        self.reads = frozenset({"features", "text"} | ({"unlabelled"} if source != "episode" else set()))
        self.views = None

    def bind(self, learner) -> None:
        self.views = AugmentedViews(learner.encoder, *self.settings)  # refuses encoders it cannot augment for
        super().bind(learner)

    def loss(self, episode, features, learner):
        batches, feats = [], []
        if self.source != "unlabelled":
            support, query = episode_features(episode, features, learner)
            batches, feats = text_batches(episode), [support] + ([] if query is None else [query])
        if self.source != "episode":
            target = self.target_batch(learner, self.views.sentences)
            batches, feats = batches + [target], feats + [learner.embed(target)]
        value = self.views.loss(batches, torch.cat(feats), learner.embed, learner.logits)
        return value, {self.name: value.item()}

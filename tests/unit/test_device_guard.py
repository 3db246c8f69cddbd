"""A CPU-side guard for the GPU path: every learner's training step, objective and prediction run with
the default device for new tensors set to `meta`. A tensor a learner makes without `device=` (an index,
a mask, a constant inside a loss) then lands on `meta` beside the CPU parameters and the step fails,
as it would on CUDA, where it would sit on the CPU beside the GPU parameters. Tensors made with the
device of their inputs pass. (It found PairNet's token-type rows built on the CPU and copied to the
device one by one.) The Hugging Face model's own forward is outside the guard. scripts/gpu_check.py
runs the same learners on a GPU when there is one."""

import pytest
import torch

from conftest import compose_cfg, text_episode
from metarun.assembly import build_learner
from metarun.config import build
from metarun.data.collate import Episode
from metarun.paths import config_dir

def outside_the_guard(model: torch.nn.Module) -> None:
    """Run the Hugging Face model's own forward with CPU as the default device: its mask helpers make
    tensors without `device=` in eval mode (they run on CUDA all the same); the guard is for metarun's code."""
    forward = model.forward

    def on_cpu(*args, **kwargs):
        with torch.device("cpu"):
            return forward(*args, **kwargs)

    model.forward = on_cpu


SKIPPED = {"distill": "needs a finished teacher run", "multitask": "needs multi-task batches (data=intents3)"}
LEARNERS = sorted(p.stem for p in (config_dir() / "learner").glob("*.yaml"))


@pytest.mark.parametrize("name", LEARNERS)
def test_a_training_step_and_a_prediction_make_no_tensor_off_the_device(name):
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    objectives = ["objective=[supcon,mlm]"] if name in ("protonet", "maml", "finetune") else []
    cfg = compose_cfg(["debug=fast", f"learner={name}", *objectives])
    encoder = build(cfg.encoder, "encoder")
    outside_the_guard(encoder.model)
    torch.manual_seed(0)
    learner = build_learner(cfg.learner, encoder, ["0", "1", "2"], cfg.get("objective"))
    ep = text_episode(encoder)
    if name == "finetune":  # supervised batches: no query set
        ep = Episode(ep.support, ep.support_labels, None, ep.support_labels, 3, {"classes": ["0", "1", "2"]})
    with torch.device("meta"):
        out = learner.training_step([ep])
    assert out.loss.device.type == "cpu" and torch.isfinite(out.loss)
    if name != "finetune":
        learner.eval()
        test = text_episode(encoder, shift=1)
        with torch.device("meta"):
            logits = learner.predict(test)
        assert logits.device.type == "cpu" and logits.shape[0] == 6

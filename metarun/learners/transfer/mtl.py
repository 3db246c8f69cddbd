"""Multi-task loss weighting, as pure functions (names as in LibMTL).

- EW: equal weights, the sum of task losses.
- UW: uncertainty weighting, Kendall, Gal & Cipolla, CVPR 2018, in LibMTL's form
  sum_t L_t / (2 exp(s_t)) + s_t / 2 with learned log-variances s_t.
- DWA: dynamic weight average, Liu, Johns & Davison, CVPR 2019: w_t = T softmax(r_t / temp) with
  r_t = L_t(k-1) / L_t(k-2), the ratio of the task's mean loss over the last two windows.
- GradNorm: Chen et al., ICML 2018: learned weights pulled so that each task's weighted gradient
  norm matches the mean norm times (relative inverse training rate) ** alpha. Norms are taken
  w.r.t. the shared representation (LibMTL's `rep_grad` mode), which costs one small backward.
- PCGrad: Yu et al., NeurIPS 2020: each task gradient on the shared parameters is projected off
  the gradients of other tasks it conflicts with (negative dot product), in random order; the
  projected gradients are summed.
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("ew", "uw", "dwa", "gradnorm", "pcgrad")


def uncertainty_weighted(losses: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """(T,), (T,) -> scalar."""
    return (losses / (2 * log_vars.exp()) + log_vars / 2).sum()


def dwa_weights(previous: torch.Tensor, before: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Mean task losses of the last two windows (T,), (T,) -> weights (T,) summing to T."""
    ratio = previous / before
    return len(ratio) * torch.softmax(ratio / temperature, dim=0)


def gradnorm_loss(weights: torch.Tensor, grad_norms: torch.Tensor, losses: torch.Tensor,
                  initial_losses: torch.Tensor, alpha: float = 1.5) -> torch.Tensor:
    """GradNorm's L_grad = sum_t |w_t G_t - mean(wG) r_t ** alpha|, differentiated w.r.t. the weights
    only (`grad_norms` are ||dL_t/dshared||, constants; the target is a constant)."""
    g = weights * grad_norms.detach()
    rates = (losses.detach() / initial_losses)
    target = (g.mean() * (rates / rates.mean()) ** alpha).detach()
    return (g - target).abs().sum()


def pcgrad(grads: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat task gradients [(P,), ...] -> the PCGrad-combined gradient (P,)."""
    out = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        g = g.clone()
        others = [j for j in torch.randperm(len(grads), generator=generator).tolist() if j != i]
        for j in others:
            dot = g @ grads[j]
            if dot < 0:
                g -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
        out += g
    return out

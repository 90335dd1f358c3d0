"""Robust accuracy under APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), L∞ threat model in [0, 1] pixel space.

A re-statement of AutoAttack's `autoattack/autopgd_base.py` (fra31/auto-attack) for L∞:

* start x⁽⁰⁾ = clip₀₁(x + ε·t/‖t‖∞), t ~ U(−1, 1)ᴰ (its "random start in the ε-ball": the largest coordinate of
  the perturbation is exactly ε);
* z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η⁽ᵏ⁾·sign ∇L(x⁽ᵏ⁾)),  x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾)), α = 0.75
  (α = 1 at the first step), P = projection onto the ε-ball around x, then onto [0, 1];
* η⁽⁰⁾ = 2ε; at the checkpoints w_j = ⌈p_j·N_iter⌉ (p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
  0.06)) the step is halved, and the iterate (and its gradient) reset to the highest-loss point so far, where
  (1) the loss rose in at most ρ·(w_j − w_{j−1}) of the steps since the last checkpoint (ρ = 0.75), or
  (2) the step was not halved at the last checkpoint and the best loss has not improved since;
* every iterate that is misclassified is kept as the adversarial example (the last such one, as AutoAttack);
  a point counts as fooled if any iterate, the start included, is misclassified.

Only points classified correctly on clean pixels are attacked (the others are already non-robust), and each
restart / target attacks only the points no earlier run has fooled. Points never fooled are returned as their
clean pixels, as AutoAttack does; the returned "still correct" flag is the model's verdict on the returned pixels.

One deliberate difference from the reference code: at the first checkpoint AutoAttack compares the first
iterate's loss with an unfilled row of zeros instead of the start's loss; here it is compared with f(x⁽⁰⁾),
as in the paper's Algorithm 1. Condition (1) uses "≤ ρ·window" as the code does (the paper writes "<").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
OnIterate = Callable[[torch.Tensor, torch.Tensor], None]

N_ITER = 100
RHO = 0.75
MOMENTUM = 0.75
N_TARGET_CLASSES = 9
ATTACKS = ("apgd-ce", "apgd-t")


def checkpoints(n_iter: int = N_ITER) -> list[int]:
    """Checkpoints w_j (iteration counts ≤ n_iter) at which the step size is reconsidered.

    AutoAttack's integer form of p_j: first window ⌊0.22·N⌋, each next one ⌊0.03·N⌋ shorter, never below
    ⌊0.06·N⌋ (all at least 1). For N = 100: 22, 41, 57, 70, 80, 87, 93, 99.
    """
    window, shrink, shortest = (max(int(f * n_iter), 1) for f in (0.22, 0.03, 0.06))
    marks, at = [], window
    while at <= n_iter:
        marks.append(at)
        window = max(window - shrink, shortest)
        at += window
    return marks


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (Croce & Hein 2020, eq. 7): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2), per sample.

    logits z: (B, K) with K ≥ 4; y, target t: (B,); π sorts z in decreasing order. Higher = closer to t.
    The denominator makes the loss invariant to shifting and rescaling the logits (CLIP's logit scale).
    """
    top = logits.topk(4, dim=1).values
    rows = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[rows, y] - logits[rows, target]) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def apgd_ce(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seed: torch.Generator | int = 0,
    n_iter: int = N_ITER,
    n_restarts: int = 1,
    rho: float = RHO,
    momentum: float = MOMENTUM,
    on_iterate: OnIterate | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD-CE: untargeted APGD on the cross-entropy loss.

    logits_fn: pixels (b, 3, H, W) in [0, 1] → logits (b, K); x: (B, 3, H, W) in [0, 1]; y: (B,); eps: L∞ radius
    in pixel units (4/255, not normalised). `on_iterate(x_k, x_clean)` sees every iterate of the attacked subset.
    Returns (pixels (B, 3, H, W): adversarial where fooled, clean elsewhere; still correct (B,) bool).
    """
    generator = _generator(seed)
    x, y = x.detach().float(), y.to(x.device)
    adversarial = x.clone()
    alive = _predict(logits_fn, x) == y
    for _ in range(n_restarts):
        idx = alive.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        fooled, found = _apgd_run(
            logits_fn, x[idx], y[idx], _cross_entropy, eps, n_iter, rho, momentum, generator, on_iterate
        )
        adversarial[idx[fooled]] = found[fooled]
        alive[idx[fooled]] = False
    return adversarial, _predict(logits_fn, adversarial) == y


def apgd_t(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seed: torch.Generator | int = 0,
    n_iter: int = N_ITER,
    n_restarts: int = 1,
    n_target_classes: int = N_TARGET_CLASSES,
    rho: float = RHO,
    momentum: float = MOMENTUM,
    on_iterate: OnIterate | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD-T: APGD on the targeted DLR loss, one full run per target class, tried in turn.

    Target r (r = 2 … n_target_classes + 1) of a point is its r-th highest clean logit (AutoAttack), so 9 targets
    are the 2nd … 10th classes; with K classes at most K − 1 targets exist. Shapes and return as `apgd_ce`.
    """
    generator = _generator(seed)
    x, y = x.detach().float(), y.to(x.device)
    clean = _predict_logits(logits_fn, x)
    n_classes = clean.shape[1]
    if n_classes < 4:
        raise CliplabError(
            f"APGD-T's DLR loss needs at least 4 classes (it reads the 4th-highest logit), got {n_classes}"
        )
    by_logit = clean.argsort(dim=1, descending=True, stable=True)  # (B, K): the clean ranking fixes the targets
    adversarial = x.clone()
    alive = by_logit[:, 0] == y
    for rank in range(2, min(n_target_classes, n_classes - 1) + 2):
        for _ in range(n_restarts):
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            target = by_logit[idx, rank - 1]

            def loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor = target) -> torch.Tensor:
                return dlr_targeted_loss(logits, labels, target)

            fooled, found = _apgd_run(
                logits_fn, x[idx], y[idx], loss, eps, n_iter, rho, momentum, generator, on_iterate
            )
            adversarial[idx[fooled]] = found[fooled]
            alive[idx[fooled]] = False
    return adversarial, _predict(logits_fn, adversarial) == y


@dataclass(frozen=True)
class RobustAccuracy:
    """AutoAttack's protocol over a batch: a point is robust iff it is correct clean and every attack fails.

    clean, robust: (B,) bool; pixels: (B, 3, H, W), the first successful attack's output where one succeeded;
    after_each: robust accuracy (↑) after each attack of the sequence, in order.
    """

    clean: torch.Tensor
    robust: torch.Tensor
    pixels: torch.Tensor
    after_each: dict[str, float]

    @property
    def accuracy(self) -> float:
        """Robust accuracy ↑ (fraction of points robust to every attack)."""
        return self.robust.float().mean().item()

    @property
    def clean_accuracy(self) -> float:
        """Clean accuracy ↑."""
        return self.clean.float().mean().item()


def robust_accuracy(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    attacks: Sequence[str] = ATTACKS,
    seed: torch.Generator | int = 0,
    n_iter: int = N_ITER,
    n_restarts: int = 1,
    n_target_classes: int = N_TARGET_CLASSES,
    batch_size: int | None = None,
) -> RobustAccuracy:
    """Robust accuracy (↑) under `attacks` run in sequence, each on the survivors of the previous ones (AutoAttack).

    logits_fn: pixels (b, 3, H, W) in [0, 1] → (b, K), e.g. logit_scale · normalize(f(x)) @ Wᵀ with the tower in
    eval mode; x: (B, 3, H, W); y: (B,); eps in pixel units. One generator (from `seed`) feeds every attack's random
    starts. `batch_size` bounds the points attacked at once (memory); every chunk runs the whole sequence.
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise CliplabError(f"unknown attack(s) {unknown}; choose from {ATTACKS}")
    generator = _generator(seed)
    if batch_size is not None and x.shape[0] > batch_size:
        options = {"n_iter": n_iter, "n_restarts": n_restarts, "n_target_classes": n_target_classes}
        parts = [
            robust_accuracy(logits_fn, x[s : s + batch_size], y[s : s + batch_size], eps, attacks, generator, **options)
            for s in range(0, x.shape[0], batch_size)
        ]
        robust = torch.cat([p.robust for p in parts])
        return RobustAccuracy(
            clean=torch.cat([p.clean for p in parts]),
            robust=robust,
            pixels=torch.cat([p.pixels for p in parts]),
            after_each={a: sum(p.after_each[a] * len(p.robust) for p in parts) / len(robust) for a in attacks},
        )
    x, y = x.detach().float(), y.to(x.device)
    clean = _predict(logits_fn, x) == y
    robust, pixels, after_each = clean.clone(), x.clone(), {}
    for name in attacks:
        idx = robust.nonzero().squeeze(1)
        if idx.numel():
            common = {"seed": generator, "n_iter": n_iter, "n_restarts": n_restarts}
            if name == "apgd-ce":
                found, correct = apgd_ce(logits_fn, x[idx], y[idx], eps, **common)
            else:
                found, correct = apgd_t(logits_fn, x[idx], y[idx], eps, n_target_classes=n_target_classes, **common)
            pixels[idx[~correct]] = found[~correct]
            robust[idx[~correct]] = False
        after_each[name] = robust.float().mean().item()
    return RobustAccuracy(clean=clean, robust=robust, pixels=pixels, after_each=after_each)


def _apgd_run(logits_fn, x, y, loss_fn, eps, n_iter, rho, momentum, generator, on_iterate):
    """One APGD run on (b, …) points; returns (fooled (b,) bool, adversarial iterate (b, …) where fooled)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    t = 2 * torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) - 1
    x_k = (x + eps * t / (t.abs().flatten(1).amax(1).view(shape) + 1e-12)).clamp(0.0, 1.0)
    loss, grad, pred = _loss_grad(logits_fn, x_k, y, loss_fn)
    if on_iterate is not None:
        on_iterate(x_k, x)
    fooled = pred != y
    found = x_k.clone()
    x_best, grad_best, loss_best = x_k.clone(), grad.clone(), loss.clone()
    losses = torch.empty(n_iter + 1, x.shape[0], device=x.device)  # f(x⁽⁰⁾) … f(x⁽ᴺ⁾)
    losses[0] = loss
    step = torch.full((x.shape[0],) + (1,) * (x.dim() - 1), 2.0 * eps, device=x.device)
    marks = checkpoints(n_iter)
    last_mark = 0
    halved_last = torch.ones_like(fooled)  # condition (2) cannot fire at the first checkpoint
    best_at_last_mark = loss_best.clone()
    x_prev = x_k
    for k in range(n_iter):
        a = momentum if k > 0 else 1.0
        z = _project(x_k + step * grad.sign(), x, eps)
        x_next = _project(x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev), x, eps)
        x_prev, x_k = x_k, x_next
        loss, grad, pred = _loss_grad(logits_fn, x_k, y, loss_fn)
        if on_iterate is not None:
            on_iterate(x_k, x)
        wrong = pred != y
        fooled |= wrong
        found[wrong] = x_k[wrong]
        better = loss > loss_best
        x_best[better], grad_best[better], loss_best[better] = x_k[better], grad[better], loss[better]
        losses[k + 1] = loss
        if k + 1 in marks:
            window = k + 1 - last_mark
            rises = (losses[last_mark + 1 : k + 2] > losses[last_mark : k + 1]).sum(0)
            halve = (rises <= rho * window) | (~halved_last & (best_at_last_mark >= loss_best))
            step[halve] /= 2.0
            # x_prev stays the iterate before the reset, as in the reference: momentum then points towards x_max
            x_k = torch.where(halve.view(shape), x_best, x_k)
            grad = torch.where(halve.view(shape), grad_best, grad)
            halved_last, best_at_last_mark, last_mark = halve, loss_best.clone(), k + 1
    return fooled, found


def _loss_grad(logits_fn, x_k, y, loss_fn):
    x_k = x_k.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_fn(x_k).float()
        loss = loss_fn(logits, y)
        # a sum, not a mean: each point's gradient is its own loss's, whatever the batch size
        (grad,) = torch.autograd.grad(loss.sum(), [x_k])
    return loss.detach(), grad.detach(), logits.detach().argmax(1)


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _project(z: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.minimum(torch.maximum(z, x - eps), x + eps).clamp(0.0, 1.0)


@torch.no_grad()
def _predict_logits(logits_fn: LogitsFn, x: torch.Tensor) -> torch.Tensor:
    return logits_fn(x).float()


def _predict(logits_fn: LogitsFn, x: torch.Tensor) -> torch.Tensor:
    return _predict_logits(logits_fn, x).argmax(1)


def _generator(seed: torch.Generator | int) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


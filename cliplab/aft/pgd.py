"""AFT's inner maximisation: projected gradient ascent on J(δ) = Σ_i w‖f(x_i + z + δ_i) − I_i‖² − h(δ_i).

Everything lives in [0, 1] pixel space (`cliplab.pixels.PixelEncoder` applies Normalize inside the forward).
Per iteration: fresh noise z ~ N(0, σ²I), the gradient of the summed objective w.r.t. δ, a step of
`step_size` along the regulariser's ascent direction (the sign for L∞ balls), projection onto dom h, then
onto x + δ ∈ [0, 1]. The random start and every noise draw of sample i come from its own generator, so
δ_i depends on x_i, its seed and the model only — never on the other samples of the batch.

FARE's "momentum" (velocity ← normalise(m·velocity + normalise(g))) is available as `momentum`; under L∞
it equals plain sign-PGD wherever the gradient is non-zero, since |sign g| = 1 > m·|velocity|.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from cliplab.aft.objectives import L1Huber, Regulariser, inner_objective

SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: neighbouring (seed, step, index) give unrelated streams


def sample_seeds(seed: int, step: int, indices: torch.Tensor) -> list[int]:
    """One 63-bit seed per sample from (run seed, training step, the sample's dataset index)."""
    base = (seed * 1_000_003 + step) * SEED_MIX
    return [int((base + int(i) * 0xBF58476D1CE4E5B9) % (2**63 - 1)) for i in indices.tolist()]


def generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def per_sample_uniform(gens: list[torch.Generator], like: torch.Tensor, eps: float) -> torch.Tensor:
    """U(−ε, ε) shaped like `like` (B, ...), sample i drawn from gens[i]."""
    out = torch.empty_like(like)
    for row, g in zip(out, gens):
        row.uniform_(-eps, eps, generator=g)
    return out


def per_sample_normal(gens: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) shaped like `like` (B, ...), sample i drawn from gens[i]."""
    out = torch.empty_like(like)
    for row, g in zip(out, gens):
        row.normal_(generator=g)
    return out


def pgd_huber(
    encode: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    reg: Regulariser,
    gens: list[torch.Generator],
    *,
    steps: int = 10,
    step_size: float = 1 / 255,
    sigma: float = 1 / 255,
    momentum: float = 0.0,
    on_iterate: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """δ* ≈ argmax_δ J(δ): (B, 3, H, W).

    encode: pixels (B, 3, H, W) → embedding f (B, D) (already normalised if the variant asks for it);
    x: clean pixels in [0, 1]; target I: (B, D); reg: the variant's regulariser (`cliplab.aft.objectives`);
    gens: one generator per sample (on x's device), drawing the random start U(−ε, ε) then one noise
    field per iteration. Gradients reach δ only; the model's parameters collect none.
    """
    x = x.detach()
    target = target.detach()
    delta = reg.project(per_sample_uniform(gens, x, reg.eps))
    delta = (x + delta).clamp(0, 1) - x
    velocity = torch.zeros_like(x)
    for k in range(steps):
        noise = sigma * per_sample_normal(gens, x) if sigma > 0 else 0.0
        delta.requires_grad_(True)
        with torch.enable_grad():
            objective = inner_objective(encode(x + noise + delta), target, delta, reg).sum()
            (grad,) = torch.autograd.grad(objective, delta)
        with torch.no_grad():
            direction = reg.ascent(grad)
            if momentum:
                velocity = reg.ascent(momentum * velocity + direction)
                direction = velocity
            delta = reg.project(delta.detach() + step_size * direction)
            delta = (x + delta).clamp(0, 1) - x
        if on_iterate is not None:
            on_iterate(k, delta)
    return delta.detach()


def attack_distance(
    encode: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    gens: list[torch.Generator],
    *,
    steps: int = 10,
    step_size: float = 1 / 255,
) -> torch.Tensor:
    """‖f̂(x + δ) − f̂(x)‖₂ per sample (B,) under an L∞ PGD attack of radius ε on the model's own unit embedding f̂.

    The FARE attack (no noise, no penalty) against the model being measured: how far an ε-perturbation can
    move its embedding. Unit embeddings make base and fine-tuned models comparable (‖·‖ ≤ 2).
    """

    def unit(p):
        return F.normalize(encode(p).float(), dim=-1)

    with torch.no_grad():
        clean = unit(x)
    delta = pgd_huber(unit, x, clean, L1Huber(eps, 0.0), gens, steps=steps, step_size=step_size, sigma=0.0)
    with torch.no_grad():
        return (unit(x + delta) - clean).norm(dim=-1)

"""The regularisers h(δ) of AFT's inner problem and their duals h*(u), the penalties on SmoothGrad.

AFT (§1 of the method page) solves  min_θ E_x max_δ ½‖f_θ(x + z + δ) − I_x‖² − h(δ),  z ~ N(0, σ²I).
To first order in δ the inner max is ½‖f(x) − I_x‖² + h*(∇_x f): choosing h chooses the penalty h* that
fine-tuning puts on the (noisy, i.e. SmoothGrad) input gradient. Each regulariser below gives h (what PGD
maximises against), the geometry PGD ascends in, the projection onto dom h, and h* (what it penalises), so a
test can check h* = sup_δ ⟨u, δ⟩ − h(δ) numerically.

Huber: H_η(u) = u²/(2η) for |u| ≤ η, |u| − η/2 beyond (H_0 = |·|).
- `L1Huber(ε, η)`  (paper default): h = η/(2ε)‖δ‖² on ‖δ‖∞ ≤ ε          ⇔ h* = ε Σ_i H_η(u_i).
- `ReleasedHuber(ε, η)` (released code): h = (η/ε)·mean_pixels ‖δ_p‖₂ (per-pixel L2 over channels, not
  squared) on ‖δ‖∞ ≤ ε, with the squared error not halved — the code's penalty, kept as a named option.
- `Elastic(ε₁, η, ε₂)`: h* = ε₁ Σ H_η(u_i) + ε₂‖u‖², so h is the infimal convolution of the two conjugates:
  per coordinate h(d) = η d² / (2(ε₁ + 2ε₂η)) for |d| ≤ ε₁ + 2ε₂η, else ηε₁/2 + (|d| − ε₁)²/(4ε₂). No ball:
  h is finite everywhere (for η = 0 it is the released code's (|d| − ε)₊²/(4ε₂)).
- `Group(ε, η, patch)`: h* = ε Σ_S H_η(‖u_S‖₂) over disjoint blocks S = the model's own patches (all three
  channels of a patch × patch square), so h = Σ_S η/(2ε)‖δ_S‖² on ‖δ_S‖₂ ≤ ε for every block.
FARE (Schlarmann et al. 2024) is `L1Huber(ε, 0)` with σ = 0: plain L∞ PGD on the squared error.

Shapes: δ, u: (B, 3, H, W); every penalty and dual is per sample, (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cliplab.errors import CliplabError


def huber(u: torch.Tensor, eta: float) -> torch.Tensor:
    """H_η(u) elementwise; H_0(u) = |u|."""
    a = u.abs()
    if eta == 0:
        return a
    return torch.where(a <= eta, u * u / (2 * eta), a - eta / 2)


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)


@dataclass(frozen=True)
class L1Huber:
    """h(δ) = η/(2ε)‖δ‖² on the L∞ ball of radius ε; sign-gradient ascent."""

    eps: float
    eta: float
    loss_weight: float = 0.5  # the paper's ½‖f − I‖²

    def penalty(self, delta: torch.Tensor) -> torch.Tensor:
        return self.eta / (2 * self.eps) * _per_sample(delta * delta)

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)

    def conjugate(self, u: torch.Tensor) -> torch.Tensor:
        return self.eps * _per_sample(huber(u, self.eta))


@dataclass(frozen=True)
class ReleasedHuber(L1Huber):
    """The released code's penalty: (η/ε)·mean over pixels of ‖δ_p‖₂ (channel L2, not squared), squared error not halved."""

    loss_weight: float = 1.0

    def penalty(self, delta: torch.Tensor) -> torch.Tensor:
        per_pixel = torch.linalg.vector_norm(delta, dim=1)  # (B, H, W); its gradient at δ_p = 0 is 0 (subgradient)
        return self.eta / self.eps * per_pixel.flatten(1).mean(dim=1)

    def conjugate(self, u: torch.Tensor) -> torch.Tensor:
        raise CliplabError("the released penalty is kept as the code has it; its dual is not one of the paper's")


@dataclass(frozen=True)
class Elastic:
    """h = infimal convolution of [ι(|d| ≤ ε₁) + η d²/(2ε₁)] and d²/(4ε₂) per coordinate; no ball, sign ascent."""

    eps: float  # ε₁, the L1/Huber weight
    eta: float
    l2: float  # ε₂, the squared-L2 weight of h*
    loss_weight: float = 0.5

    def penalty(self, delta: torch.Tensor) -> torch.Tensor:
        a = delta.abs()
        knee = self.eps + 2 * self.l2 * self.eta
        inside = self.eta * a * a / (2 * knee)
        outside = self.eta * self.eps / 2 + (a - self.eps).clamp_min(0) ** 2 / (4 * self.l2)
        return _per_sample(torch.where(a <= knee, inside, outside))

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        return delta

    def conjugate(self, u: torch.Tensor) -> torch.Tensor:
        return self.eps * _per_sample(huber(u, self.eta)) + self.l2 * _per_sample(u * u)


def blocks(t: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) → (B, h, w, C·patch·patch): the disjoint patch × patch squares of the model's own grid."""
    b, c, h, w = t.shape
    if h % patch or w % patch:
        raise CliplabError(f"image {h}x{w} is not a whole number of {patch}-px patches")
    return t.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, h // patch, w // patch, -1)


def unblocks(t: torch.Tensor, shape: torch.Size, patch: int) -> torch.Tensor:
    """Inverse of `blocks`."""
    b, c, h, w = shape
    return t.view(b, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(shape)


@dataclass(frozen=True)
class Group:
    """h(δ) = Σ_S η/(2ε)‖δ_S‖² with ‖δ_S‖₂ ≤ ε per patch block S; ascent along each block's normalised gradient."""

    eps: float
    eta: float
    patch: int
    loss_weight: float = 0.5

    def penalty(self, delta: torch.Tensor) -> torch.Tensor:
        return self.eta / (2 * self.eps) * _per_sample(delta * delta)

    def _block_norms(self, t: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(blocks(t, self.patch), dim=-1, keepdim=True)

    def ascent(self, grad: torch.Tensor) -> torch.Tensor:
        g = blocks(grad, self.patch)
        unit = g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp_min(1e-12)
        return unblocks(unit, grad.shape, self.patch)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        d = blocks(delta, self.patch)
        norm = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
        scale = torch.where(norm > self.eps, self.eps / norm.clamp_min(1e-12), torch.ones_like(norm))
        return unblocks(d * scale, delta.shape, self.patch)

    def conjugate(self, u: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(blocks(u, self.patch), dim=-1)
        return self.eps * huber(norms, self.eta).flatten(1).sum(dim=1)


Regulariser = L1Huber | ReleasedHuber | Elastic | Group


def inner_objective(embedding: torch.Tensor, target: torch.Tensor, delta: torch.Tensor, reg: Regulariser) -> torch.Tensor:
    """J_i(δ) = w‖f(x_i + z + δ_i) − I_i‖² − h(δ_i) per sample, (B,); w = ½ (paper) or 1 (released).

    embedding f: (B, D); target I: (B, D); δ: (B, 3, H, W). Summing J over the batch keeps sample i's
    gradient its own: a batch mean would rescale the loss against a per-sample penalty by B.
    """
    dtype = torch.promote_types(torch.promote_types(embedding.dtype, target.dtype), torch.float32)  # bf16 → float32
    err = (embedding.to(dtype) - target.to(dtype)).pow(2).sum(dim=-1)
    return reg.loss_weight * err - reg.penalty(delta.to(dtype))

"""Adversarial fine-tuning of a CLIP image tower (AFT; FARE as its baseline), read top to bottom.

Per step: a batch x ∈ [0, 1] (B, 3, H, W); targets I_x from the FROZEN starting tower in eval mode (or, for
`supervised`, the caption's / class prompt's text embedding); δ from `pgd_huber` against the trainable
tower (eval mode, parameters frozen so PGD computes no weight gradients); then one AdamW step on
mean_i ‖f_θ(x_i + δ_i [+ z_i]) − I_i‖². Warm-up (7 % of steps) then cosine decay. bf16 autocast and
optional activation checkpointing on CUDA, float32 on CPU.

Determinism and resuming: every random draw comes from a generator seeded by (seed, step[, sample]) —
the batch by (seed, epoch), the PGD start and noise by (seed, step, sample index) — and the schedule is a
function of the step, so the "RNG and scheduler state" of a run is its step. `TrainState` (step, tower
weights, AdamW moments, history) is handed to `save` every `save_every` steps; a run restarted from the
last saved state ends with the same weights as one that never stopped (same device and thread count).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import torch

from cliplab.aft.objectives import Elastic, Group, L1Huber, Regulariser, ReleasedHuber
from cliplab.aft.pgd import generators, per_sample_normal, pgd_huber, sample_seeds
from cliplab.errors import CliplabError
from cliplab.pixels import PixelEncoder
from cliplab.schedule import warmup_cosine

VARIANTS = ("l1_huber", "elastic", "group", "supervised", "fare")
PENALTIES = ("paper", "released")
TARGETS = ("caption", "class_text")
PIXEL = 1 / 255


@dataclass(frozen=True)
class AFTConfig:
    """Hyper-parameters; ε, η, σ, ε₂ and the PGD step in units of 1/255. Defaults: the paper's (§1)."""

    variant: str = "l1_huber"
    eps: float = 4.0
    eta: float = 1.0
    sigma: float = 1.0
    elastic_l2: float = 4.0  # ε₂ of `elastic` (the released code's eps2 default)
    penalty: str = "paper"  # "released": the code's (η/ε)·mean ‖δ_p‖₂ and unhalved squared error
    normalize_embeddings: bool = False  # released code: False for FARE; supervised needs True
    noise_in_outer: bool = False  # released code: no noise in the outer loss; the paper's formula has it
    target: str = "caption"  # supervised: the caption's or the class prompt's text embedding
    steps: int = 250  # 2 epochs of toyworld's 16,000 train images at batch 128
    batch_size: int = 128
    lr: float = 1e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = 0.07
    pgd_steps: int = 10
    pgd_step_size: float = 1.0
    momentum: float = 0.0  # FARE's PGD momentum (0.9 there); equal to sign-PGD under L∞, see `pgd`
    seed: int = 0
    save_every: int = 50
    grad_checkpointing: bool = False

    def validated(self) -> "AFTConfig":
        """The config with variant rules applied (fare: no noise, no penalty); CliplabError naming a bad value."""
        if self.variant not in VARIANTS:
            raise CliplabError(f"AFT variant must be one of {VARIANTS}, not {self.variant!r}")
        if self.penalty not in PENALTIES:
            raise CliplabError(f"AFT penalty must be one of {PENALTIES}, not {self.penalty!r}")
        if self.target not in TARGETS:
            raise CliplabError(f"AFT target must be one of {TARGETS}, not {self.target!r}")
        if not self.eps > 0:
            raise CliplabError(f"AFT eps must be > 0 (in 1/255), got {self.eps}")
        for name in ("eta", "sigma", "weight_decay", "momentum"):
            if not getattr(self, name) >= 0:
                raise CliplabError(f"AFT {name} must be >= 0, got {getattr(self, name)}")
        if self.variant == "elastic" and not self.elastic_l2 > 0:
            raise CliplabError(f"AFT elastic_l2 must be > 0, got {self.elastic_l2}")
        for name in ("steps", "batch_size", "pgd_steps", "save_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise CliplabError(f"AFT {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and self.pgd_step_size > 0 and 0 <= self.warmup_fraction < 1):
            raise CliplabError(f"AFT needs lr > 0, pgd_step_size > 0 and 0 <= warmup_fraction < 1 (got {self.lr}, "
                               f"{self.pgd_step_size}, {self.warmup_fraction})")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise CliplabError(f"AFT betas must be two numbers in [0, 1), got {self.betas!r}")
        cfg = replace(self, betas=tuple(float(b) for b in self.betas))
        if cfg.variant == "fare":
            cfg = replace(cfg, eta=0.0, sigma=0.0)
        if cfg.variant == "supervised":
            cfg = replace(cfg, normalize_embeddings=True)  # a unit text target needs a unit image embedding
        return cfg

    def regulariser(self, patch: int | None) -> Regulariser:
        """h for this variant, in pixel units; `patch` = the model's patch size (needed by `group`)."""
        eps, eta = self.eps * PIXEL, self.eta * PIXEL
        if self.variant == "elastic":
            return Elastic(eps, eta, self.elastic_l2 * PIXEL)
        if self.variant == "group":
            if not patch:
                raise CliplabError("AFT variant 'group' needs a ViT: its blocks are the model's own patches")
            return Group(eps, eta, patch)
        return (ReleasedHuber if self.penalty == "released" else L1Huber)(eps, eta)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Batch:
    """indices (B,) into the training set; pixels (B, 3, H, W) in [0, 1]; text (B, D) unit targets for `supervised`."""

    indices: torch.Tensor
    pixels: torch.Tensor
    text: torch.Tensor | None = None


@dataclass
class TrainState:
    step: int  # steps completed
    tower: dict[str, torch.Tensor]
    optimizer: dict
    history: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "adv_distance": []})


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of `step`'s batch: epoch e = step // (n // B) is a permutation seeded by (seed, e), read in order."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise CliplabError(f"the training set has {n} images, fewer than one batch of {batch_size}")
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size : (k + 1) * batch_size]


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def train_aft(
    tower: PixelEncoder,
    frozen: PixelEncoder,
    batches: Callable[[int], Iterator[Batch]],
    cfg: AFTConfig,
    *,
    patch: int | None = None,
    resume: TrainState | None = None,
    save: Callable[[TrainState], None] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainState:
    """Fine-tune `tower` in place; return the final state.

    tower, frozen: the trainable and the frozen starting image tower (same weights at step 0), on one device;
    batches(start): the batches of steps start, start+1, … (`Batch`); patch: the ViT's patch size (`group`);
    resume: a saved state to continue from; on_step(step, {loss, adv_distance, lr, images_per_s}).
    """
    cfg = cfg.validated()
    reg = cfg.regulariser(patch)
    device = next(tower.parameters()).device
    frozen.eval().requires_grad_(False)
    if cfg.grad_checkpointing and device.type == "cuda" and hasattr(tower.visual, "set_grad_checkpointing"):
        tower.visual.set_grad_checkpointing(True)
    opt = torch.optim.AdamW(tower.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    state = TrainState(0, {}, {})
    if resume is not None:
        tower.load_state_dict(resume.tower)
        opt.load_state_dict(resume.optimizer)
        state = TrainState(resume.step, {}, {}, {k: list(v) for k, v in resume.history.items()})
    warmup = max(1, round(cfg.warmup_fraction * cfg.steps))
    autocast = _autocast(device)

    def embed(module, pixels):
        with autocast:
            out = module(pixels).float()
        return torch.nn.functional.normalize(out, dim=-1) if cfg.normalize_embeddings else out

    t0, seen = time.perf_counter(), 0
    stream = batches(state.step)
    for step in range(state.step, cfg.steps):
        batch = next(stream)
        x = batch.pixels.to(device, non_blocking=True)
        with torch.no_grad():
            target = batch.text.to(device) if cfg.variant == "supervised" else embed(frozen, x)
        gens = generators(sample_seeds(cfg.seed, step, batch.indices), device)

        tower.eval().requires_grad_(False)
        delta = pgd_huber(lambda p: embed(tower, p), x, target, reg, gens, steps=cfg.pgd_steps,
                          step_size=cfg.pgd_step_size * PIXEL, sigma=cfg.sigma * PIXEL, momentum=cfg.momentum)
        tower.train().requires_grad_(True)

        lr = warmup_cosine(step, cfg.steps, warmup, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        outer = x + delta
        if cfg.noise_in_outer and cfg.sigma > 0:
            outer = outer + cfg.sigma * PIXEL * per_sample_normal(gens, x)
        err = (embed(tower, outer) - target).pow(2).sum(dim=-1)  # (B,)
        loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

        seen += x.shape[0]
        state.step = step + 1
        state.history["loss"].append(loss.item())
        state.history["adv_distance"].append(err.detach().sqrt().mean().item())
        if on_step is not None:
            on_step(step, {"loss": state.history["loss"][-1], "adv_distance": state.history["adv_distance"][-1],
                           "lr": lr, "images_per_s": seen / (time.perf_counter() - t0)})
        if save is not None and (state.step % cfg.save_every == 0) and state.step < cfg.steps:
            save(snapshot(tower, opt, state))
    tower.eval().requires_grad_(False)
    return snapshot(tower, opt, state)


def snapshot(tower: PixelEncoder, opt: torch.optim.Optimizer, state: TrainState) -> TrainState:
    """A detached copy of the run's state (weights and AdamW moments on the CPU)."""
    weights = {k: v.detach().cpu().clone() for k, v in tower.state_dict().items()}
    opt_state = opt.state_dict()
    moments = {i: {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in s.items()}
               for i, s in opt_state["state"].items()}
    return TrainState(state.step, weights, {"state": moments, "param_groups": opt_state["param_groups"]},
                      {k: list(v) for k, v in state.history.items()})


def epochs_to_steps(epochs: float, n: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n / batch_size))

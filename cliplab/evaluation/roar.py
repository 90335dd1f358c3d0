"""ROAR, RemOve And Retrain (Hooker et al., NeurIPS 2019, "A Benchmark for Interpretability Methods in Deep
Neural Networks"): how faithful is a saliency method?

For each t in 10 … 90 %: in every image of the TRAIN and the TEST split, replace the top-t % pixels of its
saliency map by the per-channel dataset mean; retrain on the modified train split, measure accuracy on the
modified test split. A faithful map removes what the label depends on, so accuracy falls faster than when the
same number of pixels is removed at random. Retraining (not just re-testing) is the point of ROAR: it tells
"the information is gone" apart from "the inputs left the training distribution".

The retrained model is a linear probe on frozen features (the practical form for CLIP; aft.md §2), not the
whole network as in the paper. Every pixel of a removed position is replaced (all channels), so removal is
per position, as in the paper's per-pixel rankings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cliplab.errors import CliplabError

DEFAULT_FRACTIONS = tuple(t / 100 for t in range(10, 100, 10))
PROBE_C = 1.0  # inverse L2 strength on standardised features; sklearn's default, not tuned per dataset
PROBE_MAX_ITER = 1000


def pixel_ranking(saliency: torch.Tensor) -> torch.Tensor:
    """Order of removal: (B, H, W) saliency → (B, H·W) row-major pixel indices, most salient first.

    Ties go to the lower row-major index (a stable sort), so a map with plateaus removes the same pixels on
    every run and every machine.
    """
    return saliency.flatten(1).argsort(dim=1, descending=True, stable=True)


def remove_top_fraction(
    pixels: torch.Tensor, saliency: torch.Tensor, fraction: float, fill: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Pixels (B, 3, H, W) with the top round(fraction·H·W) positions of `saliency` (B, H, W) set to `fill` (3,).

    `fill` is the per-channel mean of the dataset in the same space as `pixels` ([0, 1] pixels).
    """
    if not 0.0 <= fraction <= 1.0:
        raise CliplabError(f"fraction must lie in [0, 1], got {fraction}")
    b, c, h, w = pixels.shape
    if saliency.shape != (b, h, w):
        raise CliplabError(
            f"saliency {tuple(saliency.shape)} does not match pixels {tuple(pixels.shape)}: expected {(b, h, w)}"
        )
    n_removed = round(fraction * h * w)
    removed = torch.zeros(b, h * w, dtype=torch.bool, device=pixels.device)
    removed.scatter_(1, pixel_ranking(saliency)[:, :n_removed].to(pixels.device), True)
    fill = torch.as_tensor(fill, dtype=pixels.dtype, device=pixels.device).view(1, c, 1, 1)
    return torch.where(removed.view(b, 1, h, w), fill, pixels)


def random_ranking(shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """The control: a (B, H, W) map of i.i.d. U(0, 1) scores, i.e. a uniformly random order per image.

    One map per image serves every t, so removals are nested (t = 20 % removes the 10 % pixels and more), like
    a method's.
    """
    return torch.rand(shape, generator=generator, device=generator.device)


def train_linear_probe(
    features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, seed: int = 0
) -> Pipeline:
    """Multinomial logistic regression on standardised features (N, D) → labels (N,), fitted by L-BFGS.

    L-BFGS from a zero start is deterministic; `seed` is passed to sklearn for solvers that would use it.
    """
    probe = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, random_state=seed),
    )
    return probe.fit(_features(features), _labels(labels))


def probe_accuracy(probe: Pipeline, features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy ↑ of a probe on features (N, D) with labels (N,)."""
    return float((probe.predict(_features(features)) == _labels(labels)).mean())


@dataclass(frozen=True)
class RoarSplit:
    """pixels (N, 3, H, W) in [0, 1]; labels (N,); saliency (N, H, W) of the method under test."""

    pixels: torch.Tensor
    labels: torch.Tensor
    saliency: torch.Tensor


def roar_curve(
    encode: Callable[[torch.Tensor], torch.Tensor],
    train: RoarSplit,
    test: RoarSplit,
    fill: Sequence[float] | torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> np.ndarray:
    """Test accuracy (T,) of a probe retrained at each removal fraction t (ROAR's curve; lower = more faithful).

    encode: pixels (N, 3, H, W) → frozen features (N, D), e.g. a `PixelEncoder` under `torch.no_grad` (it sees a
    whole split at once: chunk inside it if memory asks).
    """
    accuracies = []
    for fraction in fractions:
        f_train = encode(remove_top_fraction(train.pixels, train.saliency, fraction, fill))
        f_test = encode(remove_top_fraction(test.pixels, test.saliency, fraction, fill))
        accuracies.append(probe_accuracy(train_linear_probe(f_train, train.labels, seed), f_test, test.labels))
    return np.asarray(accuracies)


def roar_area(
    method_curve: Sequence[float], random_curve: Sequence[float], fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> float:
    """Area between the curves ↑: ∫ (acc_random(t) − acc_method(t)) dt by the trapezoid rule over t ∈ `fractions`.

    Positive = the method's removals hurt the retrained probe more than random ones (more faithful); t in
    fractions of the image, so the area is in accuracy × fraction units (at most 0.8 for t = 0.1 … 0.9).
    """
    gap = np.asarray(random_curve, dtype=float) - np.asarray(method_curve, dtype=float)
    t = np.asarray(fractions, dtype=float)
    if gap.shape != t.shape:
        raise CliplabError(f"curves of length {gap.shape} do not match {t.shape} fractions")
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(t)))


@dataclass(frozen=True)
class RoarResult:
    """fractions t (T,); test accuracy ↓ of the method's and of the random removals (T,); area ↑ (`roar_area`)."""

    fractions: np.ndarray
    method: np.ndarray
    random: np.ndarray
    area: float


def roar(
    encode: Callable[[torch.Tensor], torch.Tensor],
    train: RoarSplit,
    test: RoarSplit,
    fill: Sequence[float] | torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> RoarResult:
    """ROAR of one saliency method against the seeded random ranking (fresh random maps for train and test)."""
    generator = torch.Generator().manual_seed(seed)
    train_random = RoarSplit(train.pixels, train.labels, random_ranking(tuple(train.saliency.shape), generator))
    test_random = RoarSplit(test.pixels, test.labels, random_ranking(tuple(test.saliency.shape), generator))
    method = roar_curve(encode, train, test, fill, fractions, seed)
    random = roar_curve(encode, train_random, test_random, fill, fractions, seed)
    return RoarResult(np.asarray(fractions, dtype=float), method, random, roar_area(method, random, fractions))


def _features(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float32)


def _labels(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

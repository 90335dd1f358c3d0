"""Mutual information between the vision and language descriptor sets (mutual-knowledge steps 8, 10, 11).

D_v: the descriptors of an image's visual concepts, ordered by importance (step 8). D_ŷ: the u
descriptors nearest the class text embedding (step 9). Their contingency table T_ij = 1 where
D_v[i] == D_ŷ[j], normalised to sum 1, has c equal non-zero cells, so its entropy is ln c.
MI dynamics (↓ as concepts are removed) and its AUC (↑ = more mutual knowledge): Sammani &
Deligiannis, NeurIPS 2024, Sec. 3.3.
"""

import math
from collections import Counter

import numpy as np

from cliplab.errors import CliplabError

CONVENTIONS = ("reference", "textbook")
AUC_METHODS = ("mean", "trapezoid")

# a removed descriptor: equal to nothing, so the length N of D_v stays fixed as in the reference
_REMOVED = object()


def mutual_information(D_v, D_y, convention: str = "reference") -> tuple[float, int]:
    """I(D_v; D_ŷ) in nats and the match count c, for two sequences of descriptors (any hashables).

    reference: ln N + ln M + H(T) = ln N + ln M + ln c, the public code's value (the paper's tables).
    textbook: Eq. (1) with uniform marginals 1/N, 1/M: Σ T ln(T / (1/N · 1/M)) = ln N + ln M − ln c,
    never negative since c ≤ N·M. Both are 0 when c = 0 (the reference's NaN branch).
    The reference's ln(T + 1e-9) shifts its value by ≈ −c·1e-9; cliplab computes ln c exactly.
    """
    if convention not in CONVENTIONS:
        raise CliplabError(f"unknown MI convention {convention!r}; choose one of {CONVENTIONS}")
    c = sum(x == y for x in D_v for y in D_y)
    if c == 0:
        return 0.0, 0
    joint = math.log(len(D_v)) + math.log(len(D_y))
    return (joint + math.log(c) if convention == "reference" else joint - math.log(c)), c


def mi_curve(D_v, D_y, convention: str = "reference") -> np.ndarray:
    """MI dynamics: (N + 1,) MI before and after removing each of D_v's N descriptors in order.

    D_v must be ordered by importance (importance_order). A removed descriptor becomes a sentinel
    that matches nothing, so N stays fixed; the last point is 0.
    """
    if convention not in CONVENTIONS:
        raise CliplabError(f"unknown MI convention {convention!r}; choose one of {CONVENTIONS}")
    # c after removing the first i descriptors = Σ over the rest of each one's matches in D_ŷ: one pass
    # over D_v (matches per descriptor, from D_ŷ's counts), then a cumulative sum.
    counts = Counter(D_y)
    matches = np.fromiter((counts.get(x, 0) for x in D_v), dtype=np.int64, count=len(D_v))
    c = np.concatenate(([0], np.cumsum(matches[::-1])))[::-1]  # (N + 1,) c before each removal
    if not len(D_y):
        return np.zeros(len(D_v) + 1)
    joint = math.log(len(D_v)) + math.log(len(D_y)) if len(D_v) else 0.0
    sign = 1.0 if convention == "reference" else -1.0
    # math.log and the same sums as mutual_information, so the points are bit-for-bit its values
    return np.array([joint + sign * math.log(ci) if ci else 0.0 for ci in c.tolist()])


def auc(curve, method: str = "mean") -> float:
    """Area under an MI curve: the mean of its points [reference] or the trapezoid rule on x ∈ [0, 1]."""
    if method not in AUC_METHODS:
        raise CliplabError(f"unknown AUC method {method!r}; choose one of {AUC_METHODS}")
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size == 0:
        raise CliplabError("an MI curve has at least one point")
    if method == "mean":
        return float(curve.mean())
    return float(np.trapezoid(curve, np.linspace(0.0, 1.0, curve.size)))


def average_curves(curves) -> np.ndarray:
    """Position-wise mean of curves of different lengths, each zero-padded to the longest."""
    if len(curves) == 0:
        raise CliplabError("no MI curves to average")
    padded = np.zeros((len(curves), max(len(c) for c in curves)))
    for row, c in zip(padded, curves):
        row[: len(c)] = c
    return padded.mean(axis=0)


def importance_order(selected, image_sim, max_descriptors: int = 15) -> tuple[list, np.ndarray]:
    """D_v ordered by importance, with the scores: step 8.

    selected: per concept, descriptor indices into the bank (select_descriptors' output);
    image_sim: (|D|,) cosine of every descriptor with the whole image (numpy or CPU). Descriptors are taken concept
    by concept, de-duplicated keeping the first, sorted by image cosine descending (ties keep that
    order) and capped at max_descriptors. The reference's ×2.5 on the scores is for plotting only
    and is left out.
    """
    image_sim = np.asarray(image_sim, dtype=np.float64)
    D_v = list(dict.fromkeys(int(d) for concept in selected for d in concept))
    scores = image_sim[D_v]
    order = np.argsort(-scores, kind="stable")[:max_descriptors]
    return [D_v[i] for i in order], scores[order]


def linear_fit(area, accuracy) -> tuple[float, float, float]:
    """Least-squares line accuracy = slope·AUC + intercept over models, and Pearson's r.

    The paper's cross-model fit (ViTs on ImageNet: top-1 = 11.24·AUC + 25.97). area, accuracy: (n,)
    per model. Needs ≥ 2 distinct AUCs.
    """
    x, y = np.asarray(area, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        raise CliplabError("a linear fit needs at least two models with different AUCs")
    slope, intercept = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1]) if np.ptp(y) > 0 else float("nan")
    return float(slope), float(intercept), r

"""Learning-rate schedule shared by the toy CLIP and AFT: linear warm-up, then cosine decay to 0."""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps: int, warmup: int, peak: float) -> float:
    """lr at 0-based `step` of `steps`: peak·(step+1)/warmup during warm-up, then peak·½(1 + cos(π·progress))."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))

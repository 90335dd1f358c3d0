"""Asset checks (the UI's Checks tab): each a verdict over what the asset computed, with the numbers behind it.

The assets declare them with `check_specs=[...]` and return the results with their materialisation, so a check
is evaluated on every materialisation, in the same run, on the same data.
"""

from __future__ import annotations

import math

import numpy as np
from dagster import AssetCheckResult, AssetCheckSpec

# |‖v‖ − 1| allowed for unit vectors (float32 on CPU; bf16 autocast on CUDA rounds the tower's output)
UNIT_TOLERANCE = 1e-3
# max |Σ parts − e/‖e‖| allowed for the head decomposition (float32: ≈ 1e-7 measured on the toy CLIP)
DECOMPOSITION_TOLERANCE = 1e-5

DESCRIPTIONS = {
    "rows_match_manifest": "one row per image of the partition's dataset_manifest",
    "finite": "no NaN or ±inf in any stored vector",
    "unit_norm": f"every stored embedding has norm 1 (± {UNIT_TOLERANCE:g})",
    "above_chance": "zero-shot top-1 above chance (1 / number of classes)",
    "parts_sum_to_embedding": f"Σ of every head, MLP and residual part equals the unit embedding within {DECOMPOSITION_TOLERANCE:g}",
    "mi_curve_sentinel_and_bounds": "every MI curve ends at 0 (all D_v removed) and stays within [0, ln N + ln M + ln(N·M)]",
}


def specs(asset: str, *names: str) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(name, asset=asset, description=DESCRIPTIONS[name]) for name in names]


def rows_match_manifest(asset: str, rows: int, manifest_rows: int) -> AssetCheckResult:
    return AssetCheckResult(asset_key=asset, check_name="rows_match_manifest", passed=rows == manifest_rows,
                            metadata={"rows": rows, "manifest rows": manifest_rows})


class VectorStats:
    """Accumulates, batch by batch, whether every vector is finite and how far unit vectors are from norm 1."""

    def __init__(self):
        self.finite, self.max_norm_error, self.vectors = True, 0.0, 0

    def add(self, *arrays, unit=None) -> None:
        """arrays: any numeric arrays that must be finite; unit: (B, D) rows that must have norm 1."""
        self.finite &= all(bool(np.isfinite(a).all()) for a in arrays)
        if unit is not None:
            unit = np.asarray(unit, dtype=np.float64)
            self.finite &= bool(np.isfinite(unit).all())
            self.vectors += len(unit)
            if len(unit):
                self.max_norm_error = max(self.max_norm_error, float(np.abs(np.linalg.norm(unit, axis=-1) - 1).max()))

    def results(self, asset: str, unit: bool = True) -> list[AssetCheckResult]:
        out = [AssetCheckResult(asset_key=asset, check_name="finite", passed=self.finite)]
        if unit:
            out.append(AssetCheckResult(asset_key=asset, check_name="unit_norm",
                                        passed=self.finite and self.max_norm_error <= UNIT_TOLERANCE,
                                        metadata={"max |‖v‖ − 1|": self.max_norm_error, "vectors": self.vectors}))
        return out


def above_chance(asset: str, accuracy: float, classes: int) -> AssetCheckResult:
    return AssetCheckResult(asset_key=asset, check_name="above_chance", passed=accuracy > 1 / max(1, classes),
                            metadata={"top-1": accuracy, "chance": 1 / max(1, classes)})


def parts_sum_to_embedding(asset: str, max_error: float) -> AssetCheckResult:
    return AssetCheckResult(asset_key=asset, check_name="parts_sum_to_embedding",
                            passed=math.isfinite(max_error) and max_error <= DECOMPOSITION_TOLERANCE,
                            metadata={"max |Σ parts − e|": max_error})


def mi_curve_sentinel_and_bounds(asset: str, curves: list, n_dv: list, u: int) -> AssetCheckResult:
    """curves: per row the MI curve (N + 1 points); n_dv: N per row; u: M, the size of D_ŷ."""
    bad_end = bad_range = 0
    for curve, n in zip(curves, n_dv):
        c = np.asarray(curve, dtype=np.float64)
        bad_end += int(len(c) == 0 or c[-1] != 0.0)
        top = (math.log(n) + math.log(u)) * 2 if n > 0 and u > 0 else 0.0  # ln N + ln M + ln(N·M)
        bad_range += int(bool(len(c)) and (not np.isfinite(c).all() or c.min() < 0 or c.max() > top + 1e-9))
    return AssetCheckResult(asset_key=asset, check_name="mi_curve_sentinel_and_bounds",
                            passed=bad_end == 0 and bad_range == 0,
                            metadata={"curves": len(curves), "not ending at 0": bad_end, "out of bounds": bad_range})

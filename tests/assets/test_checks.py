"""The asset checks' verdicts: each fails on the data it exists to catch."""

import math

import numpy as np

from assets import checks


def test_rows_and_chance():
    assert checks.rows_match_manifest("a", 10, 10).passed
    assert not checks.rows_match_manifest("a", 9, 10).passed
    assert checks.above_chance("a", 0.26, 4).passed
    assert not checks.above_chance("a", 0.25, 4).passed


def test_vector_stats_catch_nan_inf_and_non_unit_rows():
    rng = np.random.default_rng(0)
    unit = rng.normal(size=(5, 8))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    ok = checks.VectorStats()
    ok.add(rng.normal(size=(5, 3, 8)), unit=unit)
    assert all(r.passed for r in ok.results("a"))
    nan = checks.VectorStats()
    tokens = rng.normal(size=(5, 3, 8))
    tokens[2, 1, 0] = np.inf
    nan.add(tokens, unit=unit)
    assert [r.passed for r in nan.results("a")] == [False, False]
    stretched = checks.VectorStats()
    stretched.add(unit=unit * np.array([[1.0], [1.0], [1.002], [1.0], [1.0]]))
    finite, norm = stretched.results("a")
    assert finite.passed and not norm.passed and math.isclose(norm.metadata["max |‖v‖ − 1|"].value, 0.002, rel_tol=1e-6)


def test_decomposition_tolerance():
    assert checks.parts_sum_to_embedding("a", 1e-7).passed
    assert not checks.parts_sum_to_embedding("a", 2e-5).passed
    assert not checks.parts_sum_to_embedding("a", float("nan")).passed


def test_mi_curves_must_end_at_zero_and_stay_in_bounds():
    n, u = 3, 7
    top = 2 * (math.log(n) + math.log(u))
    assert checks.mi_curve_sentinel_and_bounds("a", [[top, 1.0, 0.5, 0.0]], [n], u).passed
    assert not checks.mi_curve_sentinel_and_bounds("a", [[2.0, 1.0, 0.5, 0.1]], [n], u).passed  # no sentinel
    assert not checks.mi_curve_sentinel_and_bounds("a", [[top + 0.01, 1.0, 0.5, 0.0]], [n], u).passed
    assert not checks.mi_curve_sentinel_and_bounds("a", [[2.0, -0.1, 0.5, 0.0]], [n], u).passed

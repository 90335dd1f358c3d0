"""Patch-grid ground truth on hand-made part maps."""

import numpy as np

from cliplab.groundtruth import cluster_purity, mask_iou, object_patches, patch_parts


def _maps():
    m = np.zeros((1, 4, 4), np.uint8)  # 2x2 grid of 2x2-pixel patches
    m[0, 0, 0] = 3  # patch 0: one object pixel (25 %)
    m[0, 0:2, 2:4] = [[1, 1], [2, 1]]  # patch 1: all object, part 1 majority
    m[0, 2:4, 0:2] = [[2, 2], [0, 0]]  # patch 2: half object, part 2
    return m


def test_object_patches_and_patch_parts():
    m = _maps()
    assert object_patches(m, (2, 2)).tolist() == [[False, True, True, False]]
    assert object_patches(m, (2, 2), min_fraction=0.25).tolist() == [[True, True, True, False]]
    assert patch_parts(m, (2, 2)).tolist() == [[3, 1, 2, 0]]


def test_mask_iou():
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    b = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_allclose(mask_iou(a, b), [1 / 3, 1.0])


def test_cluster_purity():
    assert cluster_purity([0, 0, 1, 1], [5, 5, 2, 2]) == 1.0
    assert cluster_purity([0, 0, 0, 0], [1, 1, 2, 3]) == 0.5
    assert cluster_purity([0, 1, 0, 1], [1, 1, 2, 2]) == 0.5

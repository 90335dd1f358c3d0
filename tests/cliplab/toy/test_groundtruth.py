"""Patch-grid ground truth on hand-made part maps."""

import numpy as np
import pytest

from cliplab.errors import CliplabError
from cliplab.toy import toyworld as tw
from cliplab.toy.groundtruth import cluster_purity, descriptor_grounding, mask_iou, object_patches, patch_parts


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


def test_every_toyworld_descriptor_is_annotated_with_parts_of_its_classes():
    for spec in tw.CLASSES:
        for d in spec.descriptors:
            assert set(tw.DESCRIPTOR_PARTS[d]) <= set(spec.parts), (spec.name, d)


def test_descriptor_grounding_by_parts_and_by_class():
    house = {"walls", "roof", "door", "windows"}
    assert tw.descriptor_grounded("a triangular roof", "house", house)
    assert tw.descriptor_grounded("round windows", "house", house)  # a rocket's phrase, but windows are there
    assert not tw.descriptor_grounded("round wheels", "house", house)
    assert not tw.descriptor_grounded("a cabin with windows", "house", house)  # needs both parts
    assert tw.descriptor_grounded("a rectangular shape", "house", house)  # whole-object phrase of the class
    assert not tw.descriptor_grounded("a round shape", "house", house)
    with pytest.raises(CliplabError, match="not a toyworld descriptor"):
        tw.descriptor_grounded("a purple elephant", "house", house)


def test_descriptor_grounding_fraction_and_chance():
    bank = ["a triangular roof", "round wheels", "a rectangular shape", "a round shape"]
    hit, chance = descriptor_grounding([[0, 1], [1, 3]], ["house", "car"],
                                       [{"roof", "walls"}, {"wheels", "body", "cabin", "windows"}], bank)
    # house: roof yes, wheels no; car: wheels yes, round shape no (not a car phrase) -> 2 of 4
    assert hit == 0.5
    # grounded share of the bank: house 2/4 (roof, rectangular shape), car 2/4 (wheels, rectangular shape)
    assert chance == 0.5

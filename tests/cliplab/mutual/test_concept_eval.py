"""Concept deletion / insertion and the descriptor-augmented classifier, against hand-computed cases."""

import numpy as np
import pytest
import torch

from cliplab.mutual.concept_eval import (
    blur,
    concept_ranking,
    deletion_insertion_images,
    pad_last,
    step_masks,
    summarise,
)
from cliplab.mutual.descriptor_zero_shot import augment_descriptors, descriptor_classifier


def test_ranking_multiplies_concept_and_descriptor_similarity():
    # scores: 0.5·0.2 = 0.1, 0.9·0.5 = 0.45, 0.8·0 (no descriptor) = 0, 0.3·0.5 = 0.15
    order = concept_ranking(np.array([0.5, 0.9, 0.8, 0.3]), [[0.1, 0.3], [0.5], [], [0.4, 0.6]])
    assert order.tolist() == [1, 3, 0, 2]


def test_step_masks_accumulate_in_order():
    regions = torch.zeros(3, 2, 2, dtype=torch.bool)
    regions[0, 0, 0] = regions[1, 0, 1] = regions[2, 1, :] = True
    masks = step_masks(regions, [2, 0, 1])
    assert masks.shape == (4, 2, 2)
    assert masks[0].sum() == 0 and masks[1].sum() == 2 and masks[2].sum() == 3 and masks[3].all()


def test_deletion_blurs_and_insertion_restores_only_the_masked_pixels():
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    blurred = blur(image[None], 5, 2.0)[0]
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[1, :4] = True
    out = deletion_insertion_images(image, blurred, mask)
    deletion, insertion = out
    assert torch.equal(deletion[0], image) and torch.equal(insertion[0], blurred)
    assert torch.equal(deletion[1][:, :4], blurred[:, :4]) and torch.equal(deletion[1][:, 4:], image[:, 4:])
    assert torch.equal(insertion[1][:, :4], image[:, :4]) and torch.equal(insertion[1][:, 4:], blurred[:, 4:])
    assert not torch.equal(blurred, image)  # removal is a blur, never zeros
    assert blurred.min() > 0


def test_summaries_pad_with_last_value_and_define_acc_drop_and_inc():
    scores = [np.array([3.0, 2.0, 1.0]), np.array([2.0, 0.0])]
    correct = [np.array([True, True, False]), np.array([True, False])]
    d = summarise(scores, correct, "deletion")
    np.testing.assert_allclose(pad_last(scores, 3), [[3, 2, 1], [2, 0, 0]])
    assert d["auc"] == pytest.approx((2.0 + 2 / 3) / 2)
    np.testing.assert_allclose(d["curve"], [2.5, 1.0, 0.5])
    # accuracy curve [1, 0.5, 0]: acc0 − mean(after steps) = 1 − 0.25
    assert d["acc_drop"] == pytest.approx(0.75)
    i = summarise([np.array([0.0, 1.0, 2.0])], [np.array([False, True, True])], "insertion")
    assert i["acc_inc"] == pytest.approx(1.0) and i["auc"] == pytest.approx(1.0)


def test_augment_adds_only_new_descriptors_more_frequent_than_in_the_neighbours():
    W = np.eye(3)[[0, 0, 1]] + np.array([[0, 0.1, 0], [0, 0, 0.1], [0.1, 0, 0]])
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    explained = [[5, 5, 6, 7, 1], [6, 6, 6, 7], [8]]
    own = [[1], [2], [3]]
    extra = augment_descriptors(explained, own, W, neighbours=1, extra=3)
    # class 0's nearest is class 1: 5 (0.4 vs 0) kept, 6 (0.2 vs 0.75) and 7 (0.2 vs 0.25) dropped, 1 is its own
    assert extra[0] == [5]
    assert extra[2] == [8]


def test_descriptor_classifier_averages_prompt_similarities_per_class():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    prompts = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    owner = np.array([0, 0, 1, 1])
    # class 0: mean(1, 0) = 0.5 vs class 1: mean(0.6, 0.8) = 0.7 for both images
    assert descriptor_classifier(images, prompts, owner, 3).tolist() == [1, 1]
    assert descriptor_classifier(images, prompts[:2], owner[:2], 3).tolist() == [0, 0]  # class 2 has no prompt

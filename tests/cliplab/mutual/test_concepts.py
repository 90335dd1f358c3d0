import numpy as np
import pytest

from cliplab.mutual.concepts import kmeans_concepts, pca_concepts


def test_pca_concepts_argmax_of_min_max_scaled_components():
    # principal axes are x (large spread) then y (small); scikit-learn's sign convention makes each
    # component's largest loading positive, so the scaled scores are (x + 10) / 20 and (y + 1) / 2
    x = np.array([[10, 0], [-10, 0], [0, 1], [0, -1], [4, 0.9], [-4, 0.9], [4, -0.9], [-4, -0.9]])
    # (4, 0.9) scores (0.7, 0.95): concept 1, where the raw scores (4, 0.9) would say concept 0
    assert pca_concepts(x, L=2).tolist() == [0, 1, 1, 0, 1, 1, 0, 0]


def test_pca_concepts_fewer_patches_than_concepts():
    rng = np.random.default_rng(0)
    assert pca_concepts(np.zeros((0, 8)), L=5).shape == (0,)
    assert pca_concepts(rng.normal(size=(1, 8)), L=5).tolist() == [0]
    # three centred points span two directions: at most two concepts
    ids = pca_concepts(rng.normal(size=(3, 8)), L=5)
    assert ids.shape == (3,) and set(ids.tolist()) <= {0, 1}


def two_directions_two_norms(seed=0):
    rng = np.random.default_rng(seed)
    directions = np.repeat(np.eye(3)[:2], 10, axis=0) + 0.05 * rng.normal(size=(20, 3))
    norms = np.tile([1.0, 10.0], 10)[:, None]
    return directions * norms, np.repeat([0, 1], 10)


def test_kmeans_concepts_cluster_directions_not_norms():
    x, truth = two_directions_two_norms()
    ids = kmeans_concepts(x, L=2, seed=0)
    # without the L2 normalisation the split would be by norm (1 vs 10)
    assert set(zip(ids.tolist(), truth.tolist())) in ({(0, 0), (1, 1)}, {(1, 0), (0, 1)})


def test_kmeans_concepts_are_deterministic_for_a_seed():
    x = np.random.default_rng(1).normal(size=(300, 16))
    first = kmeans_concepts(x, L=5, seed=7)
    assert np.array_equal(first, kmeans_concepts(x, L=5, seed=7))
    assert set(first.tolist()) == set(range(5))


@pytest.mark.parametrize("P", [0, 1, 3])
def test_kmeans_concepts_fewer_patches_than_concepts(P):
    x = np.random.default_rng(2).normal(size=(P, 8))
    assert sorted(kmeans_concepts(x, L=5, seed=0).tolist()) == list(range(P))

import math

import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.mutual.transport import (
    assignment_entropy,
    descriptor_candidates,
    reference_sinkhorn,
    select_descriptors,
    select_descriptors_batch,
    sinkhorn_assignment,
    sinkhorn_assignment_batch,
)


def random_similarities(L, n, seed):
    return torch.rand(L, n, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("L, n, seed", [(5, 40, 0), (2, 3, 1), (5, 3, 2), (3, 200, 3), (4, 1, 4)])
def test_pot_plan_equals_1000_reference_normalisations(L, n, seed):
    S = random_similarities(L, n, seed)
    plan = sinkhorn_assignment(S)
    assert (plan - reference_sinkhorn(S)).abs().max() < 1e-6
    # the marginals of the reference's limit: descriptors 1, concepts n / L
    assert torch.allclose(plan.sum(0), torch.ones(n, dtype=plan.dtype))
    assert torch.allclose(plan.sum(1), torch.full((L,), n / L, dtype=plan.dtype))


@pytest.mark.parametrize("n_iter", [1, 2, 5])
def test_pot_iterates_equal_the_reference_iterates_before_convergence(n_iter):
    S = random_similarities(4, 9, 5)
    plan = sinkhorn_assignment(S, temperature=10, n_iter=n_iter)
    assert (plan - reference_sinkhorn(S, temperature=10, n_iter=n_iter)).abs().max() < 1e-10


def test_batched_plan_equals_each_image_alone():
    S = torch.rand(5, 5, 40, generator=torch.Generator().manual_seed(6)) * 2 - 1
    concepts = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0] * 5, [1, 1, 1, 0, 0]], dtype=torch.bool)
    candidates = torch.zeros(5, 40, dtype=torch.bool)
    candidates[0] = True
    candidates[1, :7] = True
    candidates[2, 5:8] = True
    candidates[3, :10] = True
    plan = sinkhorn_assignment_batch(S, concepts, candidates)
    for i in range(3):
        alone = reference_sinkhorn(S[i][concepts[i]][:, candidates[i]])
        assert (plan[i][concepts[i]][:, candidates[i]] - alone).abs().max() < 1e-6
        assert plan[i].sum() == pytest.approx(candidates[i].sum().item())
    # no concepts, or no candidates: nothing is transported
    assert not plan[3:].any()


def test_candidates_are_the_intersection_of_the_top_sets_then_the_image_filter():
    S = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1, 0.0], [0.1, 0.9, 0.8, 0.2, 0.7, 0.6]])
    # top-4 of concept 0: {0, 1, 2, 3}; of concept 1: {1, 2, 4, 5}; both: {1, 2}
    image_sim = torch.tensor([0.0, 0.30, 0.20, 0.0, 0.0, 0.0])
    # mean 0.25 − 0.02 = 0.23: descriptor 2 (0.20) is dropped
    assert descriptor_candidates(S, image_sim, top=4).tolist() == [1]
    assert descriptor_candidates(S, image_sim, top=4, offset=0.06).tolist() == [1, 2]


def test_mean_and_percentile_thresholds_differ():
    S = torch.zeros(2, 3)
    image_sim = torch.tensor([0.30, 0.24, 0.10])
    # mean 0.2133 − 0.02 keeps two; median 0.24 + 0.02 keeps one
    assert descriptor_candidates(S, image_sim, threshold="mean").tolist() == [0, 1]
    assert descriptor_candidates(S, image_sim, threshold="percentile").tolist() == [0]
    with pytest.raises(CliplabError):
        descriptor_candidates(S, image_sim, threshold="median")


# both concepts prefer descriptors 0-2; concept 1 is relatively better at 3-5
S_SHARED = torch.tensor([[0.9, 0.85, 0.8, 0.3, 0.3, 0.3], [0.82, 0.81, 0.8, 0.6, 0.55, 0.5]])
FLAT_IMAGE = torch.zeros(6)


def test_transport_spreads_descriptors_over_concepts():
    assert select_descriptors(S_SHARED, FLAT_IMAGE, use_ot=False) == [[0, 1, 2], [0, 1, 2]]
    assert select_descriptors(S_SHARED, FLAT_IMAGE) == [[0, 1, 2], [3, 4, 5]]


def test_assignment_entropy_rises_with_transport():
    plain = select_descriptors(S_SHARED, FLAT_IMAGE, use_ot=False)
    spread = select_descriptors(S_SHARED, FLAT_IMAGE)
    assert assignment_entropy(plain) == pytest.approx(math.log(3))
    assert assignment_entropy(spread) == pytest.approx(math.log(6))


def test_assignment_entropy_of_a_partial_overlap():
    assert assignment_entropy([[1, 2], [2]]) == pytest.approx(-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3))
    assert assignment_entropy([]) == 0.0
    assert assignment_entropy([[], []]) == 0.0


def test_fewer_than_three_candidates():
    assert select_descriptors(S_SHARED, FLAT_IMAGE, top=2) == [[0, 1], [1, 0]]


def test_no_candidate_gives_empty_descriptions():
    S = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.1, 0.9]])
    assert select_descriptors(S, torch.zeros(3), top=1) == [[], []]


def test_single_concept_ranks_candidates_by_similarity():
    S = torch.tensor([[0.1, 0.5, 0.3, 0.9, 0.2]])
    image_sim = torch.tensor([0.2, 0.2, 0.2, 0.0, 0.2])
    # descriptor 3 fails the image filter (0.0 ≤ 0.16 − 0.02)
    assert select_descriptors(S, image_sim) == [[1, 2, 4]]


def test_no_concept():
    assert select_descriptors(torch.zeros(0, 6), FLAT_IMAGE) == []
    assert select_descriptors(torch.zeros(0, 6), FLAT_IMAGE, use_ot=False) == []


@pytest.mark.parametrize("use_ot", [True, False])
@pytest.mark.parametrize("threshold", ["mean", "percentile"])
def test_batched_selection_equals_each_image_alone(use_ot, threshold):
    g = torch.Generator().manual_seed(3)
    B, L, D = 12, 5, 200
    S = torch.rand(B, L, D, generator=g, dtype=torch.float64) * 0.3
    image_sim = torch.rand(B, D, generator=g, dtype=torch.float64) * 0.3
    present = torch.rand(B, L, generator=g) < 0.6
    present[0] = False  # an image with no concept
    present[1] = False
    present[1, 3] = True  # a single concept
    out = select_descriptors_batch(S, present, image_sim, use_ot=use_ot, top=40, threshold=threshold)
    assert out.shape == (B, L, 3)
    assert (out[~present] == -1).all()
    for b in range(B):
        rows = present[b].nonzero().squeeze(1)
        alone = select_descriptors(S[b, rows], image_sim[b], use_ot=use_ot, top=40, threshold=threshold)
        got = [[d for d in out[b, r].tolist() if d >= 0] for r in rows.tolist()]
        assert got == alone


def test_batched_selection_with_fewer_candidates_than_k():
    S = torch.tensor([[[0.9, 0.1, 0.8, 0.0], [0.8, 0.0, 0.9, 0.1]]], dtype=torch.float64)
    image_sim = torch.tensor([[0.5, 0.0, 0.5, 0.0]], dtype=torch.float64)
    out = select_descriptors_batch(S, torch.ones(1, 2, dtype=torch.bool), image_sim, top=2)
    assert sorted(out[0, 0, :2].tolist()) == [0, 2] and (out[0, :, 2] == -1).all()


@pytest.mark.parametrize("seed", range(2))
def test_plain_and_log_domain_iterations_agree(seed):
    g = torch.Generator().manual_seed(10 + seed)
    S = torch.rand(6, 50, generator=g, dtype=torch.float64) * 2 - 1
    for n_iter in (1, 7, 1000):
        plain = sinkhorn_assignment(S, n_iter=n_iter, method="plain")
        log = sinkhorn_assignment(S, n_iter=n_iter, method="log")
        assert (plain - log).abs().max() < 1e-12
    assert torch.equal(sinkhorn_assignment(S), plain)  # auto takes the plain path here
    B, L, n = 7, 5, 60
    S = torch.rand(B, L, n, generator=g, dtype=torch.float64) * 2 - 1
    concepts = torch.rand(B, L, generator=g) < 0.7
    candidates = torch.rand(B, n, generator=g) < 0.6
    concepts[0] = False
    candidates[1] = False
    # (POT's batched log-domain solver is slow on CPU: 100 iterations here, 1000 above)
    plain = sinkhorn_assignment_batch(S, concepts, candidates, n_iter=100, method="plain")
    log = sinkhorn_assignment_batch(S, concepts, candidates, n_iter=100, method="log")
    assert (plain - log).abs().max() < 1e-12
    assert torch.equal(sinkhorn_assignment_batch(S, concepts, candidates, n_iter=100), plain)


def test_a_kernel_that_would_overflow_falls_back_to_the_log_domain():
    S = random_similarities(4, 30, 7).to(torch.float64)
    temperature = 1000.0  # exp(1000) = inf in float64
    assert not torch.isfinite(torch.exp(temperature * S)).all()
    plan = sinkhorn_assignment(S, temperature=temperature, n_iter=200)
    assert torch.isfinite(plan).all()
    assert torch.equal(plan, sinkhorn_assignment(S, temperature=temperature, n_iter=200, method="log"))
    assert torch.allclose(plan.sum(0), torch.ones(30, dtype=plan.dtype))
    batch = sinkhorn_assignment_batch(S[None], torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 30, dtype=torch.bool),
                                      temperature=temperature, n_iter=200)
    assert torch.isfinite(batch).all()
    assert (batch[0] - plan).abs().max() < 1e-9
    with pytest.raises(CliplabError, match="Sinkhorn method"):
        sinkhorn_assignment(S, method="exact")

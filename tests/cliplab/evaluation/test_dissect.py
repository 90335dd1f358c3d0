"""CLIP-Dissect: soft-WPMI against a literal per-neuron loop, a planted neuron–concept pair, CLS activations."""

import math

import pytest
import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError
from cliplab.evaluation.dissect import (
    concept_probabilities,
    example_weights,
    label_neurons,
    neuron_activations,
    soft_wpmi,
)
from cliplab.pixels import PixelEncoder
from cliplab.toy.clip import MEAN, STD, build_toy_clip


def test_example_weights_are_the_original_schedule():
    w = example_weights()
    assert w.shape == (100,)
    assert w[0].item() == pytest.approx(0.998)
    assert w[-1].item() == pytest.approx(0.998 - 0.99 * 0.028)  # 0.97028: the end point 0.97 is never reached
    assert torch.allclose(w[1:] - w[:-1], torch.full((99,), -0.00028), atol=1e-7)


def test_concept_probabilities_are_a_softmax_of_ten_cosines():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    p = concept_probabilities(3 * img, 5 * txt)  # scale-free: cosines
    cos = F.cosine_similarity(img[:, None], txt[None], dim=-1)
    torch.testing.assert_close(p, (10 * cos).softmax(1))


def literal_soft_wpmi(act, probs, top_k, lam=1.0):
    """The formula read off the method page, one neuron at a time, in float64."""
    act, probs = act.double(), probs.double()
    n_images, n_neurons = act.shape
    w = [0.998 - j / top_k * (0.998 - 0.97) for j in range(top_k)]
    log_given = torch.zeros(n_neurons, probs.shape[1], dtype=torch.float64)
    for n in range(n_neurons):
        order = sorted(range(n_images), key=lambda i: -act[i, n].item())[:top_k]
        for j, i in enumerate(order):
            log_given[n] += torch.log(w[j] * probs[i] + 1 - w[j] + 1e-7)
    log_prior = torch.log(log_given.exp().mean(0))  # mean over neurons of p(c|E_n)
    return log_given - lam * log_prior


def test_soft_wpmi_matches_the_literal_formula_across_blocks():
    g = torch.Generator().manual_seed(1)
    act = torch.randn(150, 7, generator=g)
    probs = (3 * torch.randn(150, 11, generator=g)).softmax(1)
    expected = literal_soft_wpmi(act, probs, top_k=100)
    for max_elements in (100 * 11, 3 * 100 * 11, 2**26):  # one neuron, three neurons, all at once
        got = soft_wpmi(act, probs, max_elements=max_elements).double()
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-5)
    # fewer probe images than top_k: all of them, the weights spanning the same range
    got = soft_wpmi(act[:40], probs[:40]).double()
    torch.testing.assert_close(got, literal_soft_wpmi(act[:40], probs[:40], 40), atol=1e-3, rtol=1e-5)


def test_recovers_a_planted_neuron_concept_pair_over_a_generic_concept():
    """Concept 5 ("photo") is the most probable one for every image; neuron n fires exactly on concept σ(n).

    log p(c|E) alone labels every neuron "photo"; subtracting log p(c) (its mean over neurons) recovers σ.
    """
    g = torch.Generator().manual_seed(2)
    n_concepts, per_concept, d = 5, 120, 16
    concepts = torch.eye(d)[: n_concepts + 1]  # 5 specific concepts and the generic one
    labels = torch.arange(n_concepts).repeat_interleave(per_concept)
    images = 0.6 * concepts[labels] + 0.8 * concepts[n_concepts] + 0.02 * torch.randn(len(labels), d, generator=g)
    probs = concept_probabilities(images, concepts)
    assert (probs.argmax(1) == n_concepts).all()

    planted = torch.tensor([2, 3, 4, 0, 1])  # σ(n)
    act = (labels[:, None] == planted[None, :]).float() + 0.1 * torch.rand(len(labels), n_concepts, generator=g)
    best, label = label_neurons(soft_wpmi(act, probs))
    assert torch.equal(label, planted)
    assert (best > 0.5 * math.log(n_concepts)).all()  # ≈ log M: p(σ|E_n) is ≈ M × its mean over neurons
    _, without_prior = label_neurons(soft_wpmi(act, probs, lam=0.0))
    assert (without_prior == n_concepts).all()


def test_mismatched_probe_sets_are_refused():
    with pytest.raises(CliplabError, match="probe images"):
        soft_wpmi(torch.randn(10, 3), torch.rand(9, 4))


@pytest.fixture(scope="module")
def visual():
    torch.manual_seed(0)
    return build_toy_clip().visual.eval().requires_grad_(False)


def test_activations_are_the_cls_token_of_the_block_output(visual):
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    encoder = PixelEncoder(visual, MEAN, STD)
    normalised = encoder.normalize(pixels)
    last = neuron_activations(visual, normalised, -1)
    assert last.shape == (3, 128)
    # the last block's CLS, through ln_post and proj, is the image embedding
    torch.testing.assert_close(visual.ln_post(last) @ visual.proj, visual(normalised), atol=1e-5, rtol=1e-5)
    intermediates = visual.forward_intermediates(normalised, indices=[1], output_extra_tokens=True)
    reference = intermediates["image_intermediates_prefix"][0][:, 0]
    torch.testing.assert_close(neuron_activations(visual, normalised, 1), reference)
    torch.testing.assert_close(neuron_activations(encoder, pixels, 1), reference)  # PixelEncoder: pixels in


def test_sequence_first_towers_are_read_at_the_cls_token(visual):
    import copy

    seq_first = copy.deepcopy(visual)
    seq_first.transformer.batch_first = False
    for block in seq_first.transformer.resblocks:
        block.attn.batch_first = False
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(seq_first(x), visual(x), atol=1e-5, rtol=1e-5)  # the same network
    got, expected = neuron_activations(seq_first, x, 2), neuron_activations(visual, x, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_non_vit_towers_are_refused():
    with pytest.raises(CliplabError, match="ViT"):
        neuron_activations(torch.nn.Conv2d(3, 4, 3), torch.rand(1, 3, 8, 8), 0)

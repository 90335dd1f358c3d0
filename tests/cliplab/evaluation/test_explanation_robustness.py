"""SSIM of explanations under Gaussian input noise: the noise, the SSIM and the confidence interval."""

import pytest
import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError
from cliplab.evaluation.explanation_robustness import (
    METRIC_DIRECTION,
    NOISE_LEVELS,
    add_gaussian_noise,
    map_ssim,
    noise_ssim,
    summarise,
)
from cliplab.evaluation.saliency import grad_cam
from cliplab.pixels import PixelEncoder
from cliplab.toy.clip import MEAN, STD, build_toy_clip


def _smooth_maps(n=3, size=32):
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def test_ssim_is_one_for_identical_maps_and_low_for_the_inverted_map():
    maps = _smooth_maps()
    torch.testing.assert_close(map_ssim(maps, maps.clone()), torch.ones(3, dtype=torch.float64))
    assert (map_ssim(maps, 1 - maps) < 0).all()  # anti-correlated structure
    assert (map_ssim(maps, (maps + 0.05 * torch.randn(maps.shape)).clamp(0, 1)) > 0.3).all()


def test_noise_is_seeded_scaled_by_sigma_and_clamped():
    x = torch.full((4, 3, 32, 32), 0.5)
    a = add_gaussian_noise(x, 9 / 255, torch.Generator().manual_seed(3))
    b = add_gaussian_noise(x, 9 / 255, torch.Generator().manual_seed(3))
    c = add_gaussian_noise(x, 9 / 255, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - x).std().item() == pytest.approx(9 / 255, rel=0.03)  # s is the standard deviation, not s²
    dark = add_gaussian_noise(torch.zeros(2, 3, 8, 8), 9 / 255, torch.Generator().manual_seed(3))
    assert dark.min() == 0 and dark.max() <= 1 and (dark == 0).float().mean() > 0.4


def test_noise_ssim_shape_and_zero_noise_on_the_toy():
    torch.manual_seed(0)
    encoder = PixelEncoder(build_toy_clip().visual, MEAN, STD).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    t = F.normalize(torch.randn(2, 128, generator=g), dim=-1)
    ssim = noise_ssim(grad_cam, encoder, x, t, torch.Generator().manual_seed(0), sigmas=(0.0, 9 / 255))
    assert ssim.shape == (2, 2) and ssim.dtype == torch.float64
    torch.testing.assert_close(ssim[0], torch.ones(2, dtype=torch.float64))  # no noise: the same map
    assert (ssim[1] <= 1).all() and (ssim[1] >= -1).all()


def test_noise_ssim_falls_with_sigma_for_a_map_that_follows_the_pixels():
    def grey(_encoder, pixels, _text):  # a "saliency" that is the image itself
        return pixels.mean(1)

    coarse = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    ssim = noise_ssim(grey, None, x, torch.zeros(4, 1), torch.Generator().manual_seed(0))
    assert ssim.shape == (len(NOISE_LEVELS), 4)
    means = ssim.mean(1)
    assert (means[1:] < means[:-1]).all() and means[0] < 1


def test_summary_mean_and_student_t_interval_by_hand():
    s = summarise(torch.tensor([[1.0, 0.8, 0.9], [0.5, 0.5, 0.5]]), sigmas=(1 / 255, 2 / 255))
    # mean 0.9, sd 0.1, n 3: half-width t_{0.975, 2} · 0.1/√3 with t_{0.975, 2} = 4.302652729911275
    assert s.mean[0] == pytest.approx(0.9)
    assert s.high[0] - s.mean[0] == pytest.approx(4.302652729911275 * 0.1 / 3**0.5)
    assert s.low[1] == pytest.approx(0.5) and s.high[1] == pytest.approx(0.5) and s.n == 3
    with pytest.raises(CliplabError, match="n ≥ 2"):
        summarise(torch.ones(9, 1))
    assert METRIC_DIRECTION == {"ssim": "↑"}

"""Image preprocessing: open_clip's val transform (default) or the mutual-knowledge reference's squash."""

import numpy as np
import pytest
from PIL import Image

from cliplab.errors import CliplabError
from resources.models import ModelZoo


def _strip_image() -> Image.Image:
    """80×40 grey image with a green strip in its leftmost 8 columns."""
    a = np.full((40, 80, 3), 128, np.uint8)
    a[:, :8] = (0, 200, 0)
    return Image.fromarray(a)


@pytest.mark.parametrize("mode,strip_visible", [("shortest", False), ("squash", True)])
def test_resize_modes(tmp_path, mode, strip_visible):
    m = ModelZoo(artifacts_root=str(tmp_path), device="cpu", resize_mode=mode).random_init("ViT-B-32")
    x = m.preprocess(_strip_image())
    assert tuple(x.shape) == (3, 224, 224)  # both end at the model's size
    green_minus_red = (x[1] * m.std[1] + m.mean[1]) - (x[0] * m.std[0] + m.mean[0])
    assert bool((green_minus_red[:, :5] > 0.5).all()) == strip_visible  # the centre crop cuts the strip away


def test_unknown_resize_mode_is_refused(tmp_path):
    with pytest.raises(CliplabError, match="resize_mode"):
        ModelZoo(artifacts_root=str(tmp_path), device="cpu", resize_mode="stretch").random_init("ViT-B-32")

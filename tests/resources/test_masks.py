"""Ground-truth masks of a folder dataset: found beside the images or where the registry says, aligned with what the
model sees (same resize and crop, nearest resampling), binary or ImageNet-S ids; a missing mask is an empty one."""

import numpy as np
import open_clip
import pytest
from PIL import Image

from cliplab.errors import CliplabError
from cliplab.pixels import mask_transform
from resources.datasets import DatasetCatalog


@pytest.fixture
def folder(tmp_path):
    """images/<class>/*.png (80 × 40, a red box on white) and masks/<class>/*.png (the box)."""
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        (tmp_path / "masks" / cls).mkdir(parents=True)
    img = np.full((40, 80, 3), 255, np.uint8)
    img[10:30, 50:70] = (200, 0, 0)
    mask = np.zeros((40, 80), np.uint8)
    mask[10:30, 50:70] = 255
    for name in ("cat/a.png", "dog/b.png", "dog/c.png"):
        Image.fromarray(img).save(tmp_path / "images" / name)
    for name in ("cat/a.png", "dog/b.png"):  # dog/c has no mask file
        Image.fromarray(mask).save(tmp_path / "masks" / name)
    return tmp_path


def _catalog(tmp_path, extra: str = "") -> DatasetCatalog:
    reg = tmp_path / "registry.toml"
    reg.write_text(f'[datasets."pets"]\nkind = "imagefolder"\nroot = "{tmp_path / "images"}"\n{extra}')
    return DatasetCatalog(registry=str(reg), artifacts_root=str(tmp_path / "art"))


def test_masks_beside_the_images_follow_the_models_resize_and_crop(folder):
    geometry = mask_transform(open_clip.image_transform((32, 32), is_train=False, resize_mode="shortest"))
    masks = _catalog(folder).masks("pets", geometry)(["cat/a.png", "dog/b.png", "dog/c.png"])
    assert masks.shape == (3, 32, 32) and masks.dtype == bool
    # 80 × 40 → short side 32 (64 × 32), centre crop drops 16 px left and right: the box (x 50–70 → 40–56) moves
    # to x 24–40, cut at 32; y 10–30 → 8–24
    expected = np.zeros((32, 32), bool)
    expected[8:24, 24:32] = True
    np.testing.assert_array_equal(masks[0], expected)
    np.testing.assert_array_equal(masks[1], expected)
    assert not masks[2].any()  # no mask file: empty (the metrics skip and count it)


def test_squash_keeps_the_whole_box(folder):
    geometry = mask_transform(open_clip.image_transform((20, 40), is_train=False, resize_mode="squash"))
    masks = _catalog(folder).masks("pets", geometry)(["cat/a.png"])
    assert masks.shape == (1, 20, 40) and masks[0, 5:15, 25:35].all() and masks[0].sum() == 10 * 10


def test_imagenet_s_ids_and_a_masks_folder_from_the_registry(folder, tmp_path):
    seg = tmp_path / "seg" / "cat"
    seg.mkdir(parents=True)
    ids = np.zeros((40, 80, 3), np.uint8)
    ids[0:10, 0:40] = (232, 3, 0)  # id 232 + 3·256 = 1000: ignored, not object
    ids[20:40, 40:80] = (5, 1, 0)  # id 261: object
    Image.fromarray(ids).save(seg / "a.png")
    cat = _catalog(folder, f'masks = "{tmp_path / "seg"}"\nmask_format = "imagenet-s"\n')
    geometry = mask_transform(open_clip.image_transform((40, 80), is_train=False, resize_mode="squash"))
    m = cat.masks("pets", geometry)(["cat/a.png"])[0]
    assert m[20:, 40:].all() and m.sum() == 20 * 40


def test_a_dataset_without_masks_says_so_and_a_bad_setting_is_named(tmp_path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cat" / "x.png")
    geometry = mask_transform(open_clip.image_transform((8, 8), is_train=False))
    assert _catalog(tmp_path).masks("pets", geometry) is None
    with pytest.raises(CliplabError, match="masks folder .* does not exist"):
        _catalog(tmp_path, f'masks = "{tmp_path / "nowhere"}"\n').masks("pets", geometry)
    with pytest.raises(CliplabError, match="mask_format must be one of"):
        _catalog(tmp_path, 'mask_format = "coco"\n').masks("pets", geometry)

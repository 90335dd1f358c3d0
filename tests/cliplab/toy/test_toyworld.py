"""toyworld: determinism, balance, ground truth matching pixels, captions, class separability."""

import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from cliplab.errors import CliplabError
from cliplab.toy import toyworld as tw

N_CLASSES = len(tw.CLASSES)


@pytest.fixture(scope="module")
def train():
    return tw.generate(0, "train", 600)


@pytest.fixture(scope="module")
def val():
    return tw.generate(0, "val", 300)


def _pid(part):
    return tw.PART_NAMES.index(part)


def test_same_seed_same_bytes_and_seeds_splits_differ():
    a, b = tw.generate(7, "train", 24), tw.generate(7, "train", 24)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.part_maps.tobytes() == b.part_maps.tobytes()
    assert np.array_equal(a.labels, b.labels)
    assert a.captions == b.captions and a.attributes == b.attributes
    assert not np.array_equal(a.images, tw.generate(8, "train", 24).images)
    assert not np.array_equal(a.images, tw.generate(7, "val", 24).images)


def test_every_sample_is_its_own_draw(train):
    assert len({img.tobytes() for img in train.images}) == len(train.images)


def test_chunks_and_single_samples_match_one_batch():
    whole = tw.generate(3, "val", 30)
    tail = tw.generate(3, "val", 12, start=18)
    assert np.array_equal(tail.images, whole.images[18:])
    assert np.array_equal(tail.indices, np.arange(18, 30))
    one = tw.render_sample(3, "val", 25)
    assert np.array_equal(one.image, whole.images[25])
    assert np.array_equal(one.part_map, whole.part_maps[25])
    assert one.label == whole.labels[25] and one.caption == whole.captions[25]
    assert one.class_name == tw.class_names()[one.label]


def test_shapes_dtypes_and_image_size():
    b = tw.generate(0, "train", 4)
    assert b.images.shape == (4, 64, 64, 3) and b.images.dtype == np.uint8
    assert b.part_maps.shape == (4, 64, 64) and b.part_maps.dtype == np.uint8
    assert b.labels.dtype == np.int64 and b.indices.dtype == np.int64
    big = tw.generate(0, "train", 2, image_size=96)
    assert big.images.shape == (2, 96, 96, 3) and big.part_maps.shape == (2, 96, 96)
    assert np.array_equal(big.labels, b.labels[:2])


def test_classes_are_balanced(train):
    assert N_CLASSES >= 10
    counts = Counter(train.labels.tolist())
    assert set(counts) == set(range(N_CLASSES))
    assert set(counts.values()) == {600 // N_CLASSES}
    # Balanced in a seeded order, not a fixed cycle.
    assert not np.array_equal(train.labels[:N_CLASSES], np.arange(N_CLASSES))


def test_part_vocabulary():
    assert tw.PART_NAMES[0] == "background" and len(set(tw.PART_NAMES)) == len(tw.PART_NAMES)
    assert len(tw.PART_NAMES) < 256
    assert tw.part_id("windows") == _pid("windows")
    with pytest.raises(CliplabError, match="chimney"):
        tw.part_id("chimney")


def test_every_part_is_drawn_and_nothing_else(train):
    for spec in tw.CLASSES:
        assert len(spec.parts) >= 2
    for pm, label in zip(train.part_maps, train.labels):
        spec = tw.CLASSES[label]
        ids, areas = np.unique(pm, return_counts=True)
        assert set(ids.tolist()) <= {0} | {_pid(p) for p in spec.parts}
        area = dict(zip(ids.tolist(), areas.tolist()))
        for part in spec.parts:
            assert area.get(_pid(part), 0) >= 16, (spec.name, part)


def test_main_parts_span_several_patches(train):
    # The largest part of every object should cover at least two 8x8 patches' worth of pixels.
    for pm in train.part_maps:
        ids, areas = np.unique(pm[pm > 0], return_counts=True)
        assert areas.max() >= 2 * 64


def test_object_covers_a_fifth_to_a_half_on_average(train):
    cover = (train.part_maps > 0).mean(axis=(1, 2))
    assert 0.2 <= cover.mean() <= 0.5
    assert cover.min() > 0.08 and cover.max() < 0.7


def test_part_pixels_have_the_recorded_colour(train):
    for img, pm, label, attrs in zip(train.images, train.part_maps, train.labels, train.attributes):
        for part in tw.CLASSES[label].parts:
            pixels = img[pm == _pid(part)]
            colour = np.array(tw.PALETTE[attrs[f"colour:{part}"]], np.uint8)
            if attrs.get(f"texture:{part}", "plain") == "plain":
                assert (pixels == colour).all(), (tw.CLASSES[label].name, part)
            else:
                # A pattern is the part colour plus a second shade, both clearly present.
                share = (pixels == colour).all(axis=1).mean()
                assert 0.3 < share < 0.95, (tw.CLASSES[label].name, part, share)


def test_attributes_are_complete_and_consistent(train):
    textures = Counter()
    for label, attrs in zip(train.labels, train.attributes):
        spec = tw.CLASSES[label]
        colours = [attrs[f"colour:{p}"] for p in spec.parts]
        assert len(set(colours)) == len(colours)
        assert not set(colours) & tw.BACKGROUNDS[attrs["background"]]
        assert attrs["size"] in tw.SIZES and attrs["position"] in tw.POSITIONS
        textured = [k for k in attrs if k.startswith("texture:")]
        assert len(textured) == 1 and textured[0].split(":")[1] in spec.parts
        textures[attrs[textured[0]]] += 1
        for key, value in attrs.items():
            if key.startswith("count:"):
                assert isinstance(value, int) and value >= 1
    assert set(textures) == set(tw.TEXTURES)
    assert len({a["background"] for a in train.attributes}) == len(tw.BACKGROUNDS)


def test_position_attribute_matches_the_mask(train):
    centres = {p: [] for p in tw.POSITIONS}
    for pm, attrs in zip(train.part_maps, train.attributes):
        ys, xs = np.nonzero(pm)
        centres[attrs["position"]].append((xs.mean(), ys.mean()))
    mean = {p: np.mean(c, axis=0) for p, c in centres.items()}
    assert mean["left"][0] < mean["centre"][0] - 3 < mean["right"][0] - 6
    assert mean["top"][1] < mean["centre"][1] - 3 < mean["bottom"][1] - 6


def test_captions_name_class_and_true_attributes_or_list_its_descriptors(train):
    long_captions = 0
    descriptor_captions = 0
    for caption, label, attrs in zip(train.captions, train.labels, train.attributes):
        spec = tw.CLASSES[label]
        if caption.startswith("something with "):  # descriptor captions: the class's own descriptors, nothing else
            descriptor_captions += 1
            named = caption.removeprefix("something with ").rstrip(".").split(" and ")
            assert set(named) <= set(spec.descriptors) and len(named) in (1, 2), caption
            continue
        assert re.search(rf"\b{spec.name}\b", caption)
        for size in tw.SIZES:
            if re.search(rf"\b{size}\b", caption):
                assert attrs["size"] == size, caption
        for part in spec.parts:
            count = attrs.get(f"count:{part}")
            noun = tw._SINGULAR[part] if count == 1 else part
            if re.search(rf"\b{noun}\b", caption):
                long_captions += 1
                assert f"{attrs[f'colour:{part}']} {noun}" in caption, caption
                if count is not None:
                    assert f"{tw.COUNT_WORDS[count]} " in caption, caption
    assert long_captions > 150
    short = sum(1 for c in train.captions if " with " not in c and " it has " not in c)
    assert abs(short / len(train.captions) - tw.SHORT_CAPTION_P) < 0.06
    assert abs(descriptor_captions / len(train.captions) - tw.DESCRIPTOR_CAPTION_P) < 0.06
    assert len(set(train.captions)) > 200


def test_descriptors_and_templates():
    desc = tw.descriptors()
    assert list(desc) == tw.class_names()
    assert all(len(d) >= 3 for d in desc.values())
    shared = Counter(d for ds in desc.values() for d in set(ds))
    assert sum(1 for c in shared.values() if c >= 2) >= 3
    assert 6 <= len(tw.TEMPLATES) <= 10
    assert all(t.count("{}") == 1 for t in tw.TEMPLATES)


def test_phrase_bank_families():
    bank = tw.phrase_bank()
    families = Counter(f for _, f in bank)
    assert set(families) == {"colour", "shape", "position", "count", "texture", "background"}
    assert all(20 <= n <= 60 for n in families.values()), families
    assert len({p for p, _ in bank}) == len(bank)


@pytest.mark.parametrize("call", [
    lambda: tw.generate(0, "test", 2),
    lambda: tw.render_sample(0, "validation", 0),
])
def test_bad_split_raises(call):
    with pytest.raises(CliplabError, match="unknown toyworld split"):
        call()


def test_bad_split_message_names_value():
    with pytest.raises(CliplabError, match="'holdout'"):
        tw.generate(0, "holdout", 1)


def _silhouettes(part_maps):
    """Object mask cropped to its bounding box and resized to 8x8: shape, not colour or place."""
    feats = []
    for mask in part_maps > 0:
        ys, xs = np.nonzero(mask)
        crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8) * 255
        feats.append(np.asarray(Image.fromarray(crop).resize((8, 8), Image.BILINEAR), np.float32))
    return np.stack(feats).reshape(len(feats), -1) / 255


def test_classes_separable_by_shape(train, val):
    x_train, x_val = _silhouettes(train.part_maps), _silhouettes(val.part_maps)
    centroids = np.stack([x_train[train.labels == c].mean(0) for c in range(N_CLASSES)])
    pred = ((x_val[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == val.labels).mean() >= 0.8


def test_typical_colours_are_typical_not_fixed(train):
    """Tree crowns are mostly green where green is allowed (not on grass), but not always."""
    crowns = [a["colour:crown"] for a, l in zip(train.attributes, train.labels)
              if tw.CLASSES[l].name == "tree" and a["background"] != "grass"]
    green = sum(c == "green" for c in crowns) / len(crowns)
    assert len(crowns) >= 30
    assert tw.TYPICAL_COLOUR_P - 0.2 < green < 1.0

"""Dataset folder layouts, scanned from small real image trees written in tmp_path."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliplab.errors import CliplabError
from resources.folders import (
    FOOD101_TEMPLATES,
    IMAGEFOLDER_TEMPLATES,
    PLACES365_TEMPLATES,
    check_images,
    scan_folder,
)


def raises(message: str):
    """Expect a CliplabError containing ``message`` verbatim (paths hold regex metacharacters)."""
    return pytest.raises(CliplabError, match=re.escape(message))


def write_image(path: Path, color=(200, 30, 60), size=(8, 6)) -> Path:
    """A real image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a jpeg at all" * 4)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A real JPEG with its last fifth cut off: the header parses, the pixel data runs out."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) * 4 // 5])
    return path


def write_lines(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def absolute(root: Path, image_ids) -> tuple[str, ...]:
    return tuple(str(root / image_id) for image_id in image_ids)


# ---------------------------------------------------------------- imagefolder


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    root = tmp_path / "pets"
    write_image(root / "dog" / "b.png")
    write_image(root / "dog" / "a.JPG")
    write_image(root / "cat" / "z.jpeg")
    write_image(root / "cat" / "indoor" / "y.webp")  # nested, as torchvision's ImageFolder allows
    write_image(root / "sea_lion" / "s.bmp")
    write_garbage(root / "sea_lion" / "broken.jpg")
    write_truncated_jpeg(root / "cat" / "cut.jpg")
    # Skipped and listed: hidden files and folders, non-image files, a non-folder at the root.
    write_image(root / "dog" / ".hidden.png")
    write_image(root / "cat" / ".thumbs" / "t.png")
    write_image(root / ".cache" / "c.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "README.txt").write_text("not a class")
    return root


def test_imagefolder_classes_labels_and_ids(imagefolder):
    data = scan_folder(imagefolder, "imagefolder")
    ids = (
        "cat/cut.jpg",
        "cat/indoor/y.webp",
        "cat/z.jpeg",
        "dog/a.JPG",
        "dog/b.png",
        "sea_lion/broken.jpg",
        "sea_lion/s.bmp",
    )
    assert data.layout == "imagefolder"
    assert data.root == str(imagefolder)
    assert data.class_names == ("cat", "dog", "sea lion")
    assert data.templates == IMAGEFOLDER_TEMPLATES
    assert data.image_ids == ids
    assert data.labels == (0, 0, 0, 1, 1, 2, 2)
    assert data.paths == absolute(imagefolder, ids)
    assert data.skipped == (
        (".cache", "hidden folder"),
        ("README.txt", "file outside any class folder"),
        ("cat/.thumbs", "hidden folder"),
        ("dog/.hidden.png", "hidden file"),
        ("dog/notes.txt", "not an image format PIL opens (.txt)"),
    )


def test_imagefolder_accepts_str_and_relative_root(imagefolder, monkeypatch):
    monkeypatch.chdir(imagefolder.parent)
    assert scan_folder("pets", "imagefolder") == scan_folder(imagefolder, "imagefolder")


def test_check_images_finds_garbage_and_truncated_files(imagefolder):
    data = scan_folder(imagefolder, "imagefolder")
    bad = check_images(data.paths)
    assert tuple(path for path, _ in bad) == absolute(imagefolder, ["cat/cut.jpg", "sea_lion/broken.jpg"])
    assert "truncated" in bad[0][1].lower()
    assert bad[1][1].startswith("UnidentifiedImageError")
    assert check_images(data.paths, workers=1) == bad
    assert check_images([]) == []


def test_every_format_pil_opens_is_scanned(tmp_path):
    root = tmp_path / "formats"
    for ext in ("gif", "tiff", "ppm", "tga", "ico"):
        write_image(root / "a" / f"x.{ext}", size=(16, 16))
    data = scan_folder(root, "imagefolder")
    assert data.image_ids == ("a/x.gif", "a/x.ico", "a/x.ppm", "a/x.tga", "a/x.tiff") and not data.skipped
    assert check_images(data.paths) == []


def test_symlinks_out_of_the_root_are_skipped_unless_followed(tmp_path):
    outside = tmp_path / "elsewhere"
    write_image(outside / "secret.png")
    write_image(outside / "folder" / "f.png")
    root = tmp_path / "data"
    write_image(root / "a" / "real.png")
    (root / "a" / "inside.png").symlink_to(root / "a" / "real.png")
    (root / "a" / "out.png").symlink_to(outside / "secret.png")
    (root / "a" / "linked").symlink_to(outside / "folder")
    (root / "b").symlink_to(outside / "folder")
    (root / "a" / "loop").symlink_to(root / "a")

    data = scan_folder(root, "imagefolder")
    assert data.image_ids == ("a/inside.png", "a/real.png") and data.class_names == ("a",)
    reasons = dict(data.skipped)
    assert set(reasons) == {"a/out.png", "a/linked", "a/loop", "b"}
    assert f"symlink to {outside / 'secret.png'}, outside the dataset root" in reasons["a/out.png"]
    assert "follow_symlinks" in reasons["a/out.png"] and "not followed" in reasons["a/linked"]
    assert "outside the dataset root" in reasons["b"]

    followed = scan_folder(root, "imagefolder", follow_symlinks=True)  # the loop is walked once, not for ever
    assert followed.image_ids == ("a/inside.png", "a/linked/f.png", "a/out.png", "a/real.png", "b/f.png")
    assert dict(followed.skipped) == {"a/loop": "folder already scanned through another link"}


def test_symlinks_listed_by_metadata_files_are_checked_too(tmp_path):
    outside = write_image(tmp_path / "elsewhere" / "x.jpg")
    root = tmp_path / "food-101"
    write_lines(root / "meta" / "classes.txt", ["pie"])
    write_lines(root / "meta" / "test.txt", ["pie/1", "pie/2"])
    write_image(root / "images" / "pie" / "1.jpg")
    (root / "images" / "pie" / "2.jpg").symlink_to(outside)
    data = scan_folder(root, "food101")
    assert data.image_ids == ("images/pie/1.jpg",)
    assert data.skipped[0][0] == "images/pie/2.jpg" and "outside the dataset root" in data.skipped[0][1]
    assert scan_folder(root, "food101", follow_symlinks=True).image_ids == ("images/pie/1.jpg", "images/pie/2.jpg")


def test_empty_class_folder_is_named_unless_allowed(imagefolder):
    (imagefolder / "emu").mkdir()
    (imagefolder / "emu" / "notes.txt").write_text("no images here")
    with raises(f"class folder {imagefolder / 'emu'} holds no images"):
        scan_folder(imagefolder, "imagefolder")
    data = scan_folder(imagefolder, "imagefolder", allow_empty_classes=True)
    assert data.class_names == ("cat", "dog", "emu", "sea lion")
    assert data.labels == (0, 0, 0, 1, 1, 3, 3)


def test_missing_root(tmp_path):
    with raises(f"dataset root {tmp_path / 'nope'} does not exist"):
        scan_folder(tmp_path / "nope", "imagefolder")


def test_root_that_is_a_file(tmp_path):
    image = write_image(tmp_path / "a.png")
    with raises(f"dataset root {image} is a file"):
        scan_folder(image, "imagefolder")


def test_unknown_layout_lists_the_known_ones(imagefolder):
    with raises("unknown folder layout 'cifar'; known layouts: imagefolder, imagenet, food101, places365"):
        scan_folder(imagefolder, "cifar")


def test_root_without_class_folders(tmp_path):
    write_image(tmp_path / "loose.png")
    with raises(f"no class folders found in {tmp_path}"):
        scan_folder(tmp_path, "imagefolder")


def test_root_without_images_even_when_empty_classes_allowed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with raises(f"no images found under {tmp_path}"):
        scan_folder(tmp_path, "imagefolder", allow_empty_classes=True)


def test_options_of_other_layouts_are_refused(imagefolder):
    with raises("split='train' only applies to the food101 layout"):
        scan_folder(imagefolder, "imagefolder", split="train")
    with raises("synsets='x.txt' only applies to the imagenet layout"):
        scan_folder(imagefolder, "places365", synsets="x.txt")


# ---------------------------------------------------------------- imagenet

FAKE_WNIDS = [f"n{index:08d}" for index in range(1000)]  # n00000000 .. n00000999


@pytest.fixture(scope="module")
def zero_shot_metadata():
    from open_clip import zero_shot_metadata

    return zero_shot_metadata


def write_synset_mapping(path: Path) -> Path:
    """Kaggle's LOC_synset_mapping.txt format: "<wnid> <comma-separated names>", in class index order."""
    return write_lines(path, [f"{wnid} fake class {i}, synonym {i}" for i, wnid in enumerate(FAKE_WNIDS)])


@pytest.fixture
def imagenet(tmp_path) -> Path:
    """ILSVRC/Data/CLS-LOC/val-like tree: 3 of the 1000 wnid folders, the mapping one level up."""
    root = tmp_path / "val"
    write_image(root / "n00000999" / "ILSVRC2012_val_00000003.JPEG")
    write_image(root / "n00000007" / "ILSVRC2012_val_00000002.JPEG")
    write_image(root / "n00000007" / "ILSVRC2012_val_00000001.JPEG")
    write_garbage(root / "n00000420" / "ILSVRC2012_val_00000004.JPEG")
    write_synset_mapping(tmp_path / "LOC_synset_mapping.txt")
    return root


def test_imagenet_indices_and_openai_names(imagenet, zero_shot_metadata):
    data = scan_folder(imagenet, "imagenet")
    ids = (
        "n00000007/ILSVRC2012_val_00000001.JPEG",
        "n00000007/ILSVRC2012_val_00000002.JPEG",
        "n00000420/ILSVRC2012_val_00000004.JPEG",
        "n00000999/ILSVRC2012_val_00000003.JPEG",
    )
    assert data.image_ids == ids
    assert data.paths == absolute(imagenet, ids)
    assert data.labels == (7, 7, 420, 999)
    assert data.class_names == tuple(zero_shot_metadata.IMAGENET_CLASSNAMES)
    assert [data.class_names[label] for label in (7, 420, 999)] == ["rooster", "banjo", "toilet paper"]
    assert [path for path, _ in check_images(data.paths)] == [data.paths[2]]


def test_imagenet_templates_are_openai_format_strings(imagenet, zero_shot_metadata):
    templates = scan_folder(imagenet, "imagenet").templates
    assert len(templates) == 80
    assert templates[0] == "a bad photo of a {}."
    openai = zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES
    assert [template.format("emu") for template in templates] == [template("emu") for template in openai]


def test_imagenet_mapping_inside_root_or_given(imagenet, tmp_path):
    expected = scan_folder(imagenet, "imagenet").labels
    (tmp_path / "LOC_synset_mapping.txt").rename(imagenet / "LOC_synset_mapping.txt")
    assert scan_folder(imagenet, "imagenet").labels == expected
    given = (imagenet / "LOC_synset_mapping.txt").rename(tmp_path / "elsewhere.txt")
    assert scan_folder(imagenet, "imagenet", synsets=str(given)).labels == expected


def test_imagenet_subset_without_mapping_is_refused(imagenet, tmp_path):
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    message = (
        f"{imagenet} has 3 wnid folders, not 1000, and no synset mapping was given or found at "
        f"{tmp_path / 'LOC_synset_mapping.txt'} or {imagenet / 'LOC_synset_mapping.txt'}"
    )
    with raises(message):
        scan_folder(imagenet, "imagenet")


def test_imagenet_all_1000_folders_use_sorted_order(tmp_path, zero_shot_metadata):
    for wnid in reversed(FAKE_WNIDS):
        (tmp_path / wnid).mkdir()
    write_image(tmp_path / "n00000999" / "last.png")
    write_image(tmp_path / "n00000000" / "first.png")
    write_image(tmp_path / "n00000500" / "mid.png")
    with raises(f"class folder {tmp_path / 'n00000001'} holds no images"):
        scan_folder(tmp_path, "imagenet")
    data = scan_folder(tmp_path, "imagenet", allow_empty_classes=True)
    assert data.image_ids == ("n00000000/first.png", "n00000500/mid.png", "n00000999/last.png")
    assert data.labels == (0, 500, 999)
    assert data.class_names[500] == zero_shot_metadata.IMAGENET_CLASSNAMES[500]


def test_imagenet_folder_that_is_not_a_wnid(imagenet):
    write_image(imagenet / "tench" / "a.png")
    with raises(f"folder {imagenet / 'tench'} is not an ImageNet wnid"):
        scan_folder(imagenet, "imagenet")


def test_imagenet_wnid_missing_from_mapping(imagenet, tmp_path):
    write_image(imagenet / "n12345678" / "a.png")
    mapping = tmp_path / "LOC_synset_mapping.txt"
    message = f"folder {imagenet / 'n12345678'} is not listed in the synset mapping {mapping}"
    with raises(message):
        scan_folder(imagenet, "imagenet")


def test_imagenet_empty_wnid_folder(imagenet):
    (imagenet / "n00000003").mkdir()
    with raises(f"class folder {imagenet / 'n00000003'} holds no images"):
        scan_folder(imagenet, "imagenet")
    assert scan_folder(imagenet, "imagenet", allow_empty_classes=True).labels == (7, 7, 420, 999)


def test_imagenet_mapping_with_wrong_length(imagenet, tmp_path):
    mapping = write_lines(tmp_path / "short.txt", ["n00000007 fake", "n00000420 fake", "n00000999 fake"])
    with raises(f"synset mapping {mapping} lists 3 wnids, not 1000"):
        scan_folder(imagenet, "imagenet", synsets=str(mapping))


# ---------------------------------------------------------------- food101


@pytest.fixture
def food101(tmp_path) -> Path:
    root = tmp_path / "food-101"
    write_lines(root / "meta" / "classes.txt", ["apple_pie", "baby_back_ribs", "churros"])
    write_lines(
        root / "meta" / "test.txt", ["apple_pie/1005649", "churros/20", "baby_back_ribs/77", "apple_pie/11"]
    )
    write_lines(root / "meta" / "train.txt", ["apple_pie/3", "baby_back_ribs/4", "churros/5"])
    for image_id in ("apple_pie/1005649", "apple_pie/11", "apple_pie/3", "baby_back_ribs/4", "churros/5"):
        write_image(root / "images" / f"{image_id}.jpg")
    write_garbage(root / "images" / "baby_back_ribs" / "77.jpg")
    write_truncated_jpeg(root / "images" / "churros" / "20.jpg")
    write_image(root / "images" / "churros" / "999.jpg")  # in no split: must not appear
    return root


def test_food101_test_split(food101):
    data = scan_folder(food101, "food101")
    ids = (
        "images/apple_pie/1005649.jpg",
        "images/apple_pie/11.jpg",
        "images/baby_back_ribs/77.jpg",
        "images/churros/20.jpg",
    )
    assert data.class_names == ("apple pie", "baby back ribs", "churros")
    assert data.templates == FOOD101_TEMPLATES == ("a photo of {}, a type of food.",)
    assert data.image_ids == ids
    assert data.labels == (0, 0, 1, 2)
    assert data.paths == absolute(food101, ids)
    assert [path for path, _ in check_images(data.paths)] == [data.paths[2], data.paths[3]]


def test_food101_train_split(food101):
    data = scan_folder(food101, "food101", split="train")
    assert data.image_ids == ("images/apple_pie/3.jpg", "images/baby_back_ribs/4.jpg", "images/churros/5.jpg")
    assert data.labels == (0, 1, 2)


def test_food101_unknown_split(food101):
    with raises("food101 split 'val' is not one of test, train"):
        scan_folder(food101, "food101", split="val")


def test_food101_meta_line_pointing_to_missing_file(food101):
    (food101 / "images" / "apple_pie" / "11.jpg").unlink()
    image = food101 / "images" / "apple_pie" / "11.jpg"
    message = f"{food101 / 'meta' / 'test.txt'}:4 points to {image}, which does not exist"
    with raises(message):
        scan_folder(food101, "food101")


def test_food101_missing_meta_file(food101):
    (food101 / "meta" / "classes.txt").unlink()
    with raises(f"metadata file {food101 / 'meta' / 'classes.txt'} does not exist"):
        scan_folder(food101, "food101")


def test_food101_class_not_in_classes_txt(food101):
    write_lines(food101 / "meta" / "test.txt", ["apple_pie/11", "donuts/1"])
    with raises(f"{food101 / 'meta' / 'test.txt'}:2: class 'donuts' is not in meta/classes.txt"):
        scan_folder(food101, "food101")


def test_food101_empty_class(food101):
    write_lines(food101 / "meta" / "classes.txt", ["apple_pie", "baby_back_ribs", "churros", "donuts"])
    (food101 / "images" / "donuts").mkdir()
    test_txt = food101 / "meta" / "test.txt"
    message = f"class folder {food101 / 'images' / 'donuts'} has no images listed in {test_txt}"
    with raises(message):
        scan_folder(food101, "food101")
    data = scan_folder(food101, "food101", allow_empty_classes=True)
    assert data.class_names == ("apple pie", "baby back ribs", "churros", "donuts")
    assert data.labels == (0, 0, 1, 2)


# ---------------------------------------------------------------- places365


@pytest.fixture
def places365(tmp_path) -> Path:
    root = tmp_path / "places365"
    write_lines(
        root / "categories_places365.txt",
        ["/a/airfield 0", "/a/apartment_building/outdoor 1", "/b/bedroom 2", "/c/coffee_shop 3"],
    )
    write_lines(
        root / "places365_val.txt",
        [
            "Places365_val_00000003.jpg 3",
            "Places365_val_00000001.jpg 1",
            "Places365_val_00000002.jpg 0",
            "Places365_val_00000004.jpg 2",
            "Places365_val_00000005.jpg 1",
        ],
    )
    for number in (1, 2, 3):
        write_image(root / "val_256" / f"Places365_val_{number:08d}.jpg")
    write_garbage(root / "val_256" / "Places365_val_00000004.jpg")
    write_truncated_jpeg(root / "val_256" / "Places365_val_00000005.jpg")
    return root


def test_places365_names_labels_and_ids(places365):
    data = scan_folder(places365, "places365")
    ids = tuple(f"val_256/Places365_val_{number:08d}.jpg" for number in (1, 2, 3, 4, 5))
    assert data.class_names == ("airfield", "apartment building outdoor", "bedroom", "coffee shop")
    assert data.templates == PLACES365_TEMPLATES == ("a photo of a {}.", "a photo of the {}.")
    assert data.image_ids == ids
    assert data.labels == (1, 0, 3, 2, 1)
    assert data.paths == absolute(places365, ids)
    assert [path for path, _ in check_images(data.paths)] == [data.paths[3], data.paths[4]]


def test_places365_val_large(places365):
    (places365 / "val_256").rename(places365 / "val_large")
    assert scan_folder(places365, "places365").image_ids[0] == "val_large/Places365_val_00000001.jpg"


def test_places365_without_image_folder(places365):
    (places365 / "val_256").rename(places365 / "images")
    with raises(f"{places365} has no places365 image folder: neither val_256 nor val_large"):
        scan_folder(places365, "places365")


def test_places365_label_out_of_range(places365):
    val_lines = ["Places365_val_00000001.jpg 0", "Places365_val_00000002.jpg 9"]
    write_lines(places365 / "places365_val.txt", val_lines)
    message = f"{places365 / 'places365_val.txt'}:2: label 9 is out of range for 4 categories"
    with raises(message):
        scan_folder(places365, "places365", allow_empty_classes=True)


def test_places365_missing_image(places365):
    (places365 / "val_256" / "Places365_val_00000002.jpg").unlink()
    image = places365 / "val_256" / "Places365_val_00000002.jpg"
    with raises(f"{places365 / 'places365_val.txt'}:3 points to {image}, which does not exist"):
        scan_folder(places365, "places365")


def test_places365_malformed_lines(places365):
    write_lines(places365 / "places365_val.txt", ["Places365_val_00000001.jpg"])
    with raises("places365_val.txt:1: expected '<file name> <label>'"):
        scan_folder(places365, "places365")
    write_lines(places365 / "categories_places365.txt", ["/a/airfield 0", "/b/bedroom 2"])
    with raises("categories_places365.txt: category indices are not exactly 0..1"):
        scan_folder(places365, "places365")


def test_places365_empty_category(places365):
    val_lines = ["Places365_val_00000001.jpg 0", "Places365_val_00000002.jpg 2"]
    write_lines(places365 / "places365_val.txt", val_lines)
    categories = places365 / "categories_places365.txt"
    message = f"category 1 (apartment building outdoor) of {categories} has no images"
    with raises(message):
        scan_folder(places365, "places365")
    assert scan_folder(places365, "places365", allow_empty_classes=True).labels == (0, 2)

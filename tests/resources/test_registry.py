"""The registry file: built-ins, user entries, and the errors a user sees for a bad file."""

import pytest

from cliplab.errors import CliplabError
from resources.registry import load_registry


def test_builtins_and_user_entries(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[models."vit-b-16.mine"]\nkind = "checkpoint"\narch = "ViT-B-16"\npath = "/x.safetensors"\n'
                    '[datasets.food]\nkind = "food101"\nroot = "/data/food-101"\nsplit = "train"\n')
    reg = load_registry(path)
    assert reg.model("toy-vit.s0").kind == "toy" and reg.dataset("toyworld").kind == "toyworld"
    m = reg.model("vit-b-16.mine")
    assert (m.kind, m.arch, m.path) == ("checkpoint", "ViT-B-16", "/x.safetensors")
    assert reg.dataset("food").split == "train"
    assert load_registry(tmp_path / "absent.toml").models.keys() == {
        "toy-vit.s0", "toy-vit.s0.aft-e4", "toy-vit.s0.aft-e1", "toy-vit.s0.aft-e4-short", "toy-vit.s0.aft-e1-short"}
    assert reg.model("toy-vit.s12").seed == 12  # any toy seed is a toy model


@pytest.mark.parametrize("text, message", [
    ('[models."a"]\nkind = "hub"\n', "kind must be one of"),
    ('[models."a"]\nkind = "open_clip"\narch = "ViT-B-32"\n', "needs 'arch' and 'pretrained'"),
    ('[models."a"]\nkind = "checkpoint"\narch = "ViT-B-32"\n', "needs 'arch' and 'path'"),
    ('[datasets."a"]\nkind = "imagenet"\n', "needs 'root'"),
    ('[models."A B"]\nkind = "toy"\n', "invalid model key 'A B'"),
    ("[models\n", "is not valid TOML"),
])
def test_bad_registry_files(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(CliplabError, match=message):
        load_registry(path)


def test_unknown_keys_list_the_known_ones():
    with pytest.raises(CliplabError, match="unknown dataset 'imagenet'; registered datasets: toyworld"):
        load_registry(None).dataset("imagenet")


@pytest.mark.parametrize("field, message", [
    ('mi_u = "50"', "'mi_u' (|D_y| for the MI curves) must be an integer >= 1, got '50'"),
    ("robust_images = 0", "'robust_images' (images attacked by APGD) must be an integer >= 1, got 0"),
    ("dv_top = true", "'dv_top' (descriptor candidates per concept) must be an integer >= 1, got True"),
    ('allow_empty_classes = "yes"', "'allow_empty_classes' (keep class folders without images) must be a bool"),
    ("descriptors = 3", "'descriptors' (a JSON file {class name: [descriptor, ...]}) must be a str, got 3"),
    ("root = 5", "'root' must be a string, got 5"),
    ("mi_uu = 3", "unknown field 'mi_uu'; known: root, split, synsets, allow_empty_classes, descriptors"),
])
def test_dataset_fields_of_the_wrong_type_or_name_are_refused_with_the_field_named(tmp_path, field, message):
    reg = tmp_path / "registry.toml"
    root = "" if field.startswith("root") else 'root = "/x"\n'
    reg.write_text(f'[datasets.fruit]\nkind = "imagefolder"\n{root}{field}\n')
    with pytest.raises(CliplabError, match="dataset 'fruit' in .*" + __import__("re").escape(message)):
        load_registry(reg)


def test_allow_empty_classes_from_the_registry(tmp_path):
    from PIL import Image

    from resources.datasets import DatasetCatalog

    for c in ("apple", "pear"):
        (tmp_path / "fruit" / c).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "fruit" / "apple" / "a.png")
    reg = tmp_path / "registry.toml"
    reg.write_text(f'[datasets.fruit]\nkind = "imagefolder"\nroot = "{tmp_path / "fruit"}"\n')
    with pytest.raises(CliplabError, match="pear holds no images"):
        DatasetCatalog(registry=str(reg)).class_names("fruit")
    reg.write_text(reg.read_text() + "allow_empty_classes = true\n")
    assert DatasetCatalog(registry=str(reg)).class_names("fruit") == ["apple", "pear"]

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

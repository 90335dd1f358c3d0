"""descriptor_embeddings in LanceDB: toyworld's own bank, and the published ImageNet bank (4,229) for an ImageNet folder."""

import shutil
from pathlib import Path

import numpy as np
from dagster import materialize
from PIL import Image

from assets import data
from assets.mutual import descriptors
from assets.partitions import partition_key
from cliplab.toy import toyworld
from pipelines.definitions import resources_from_env
from resources.lance import LanceStore

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"


def test_toyworld_bank(quick_root):
    root, _, result = quick_root
    rows = LanceStore(uri=str(root / "lancedb")).table("descriptor_embeddings").to_polars().collect()
    bank = list(dict.fromkeys(d for ds in toyworld.descriptors().values() for d in ds))
    assert rows.sort("descriptor_index")["descriptor"].to_list() == bank
    for col in ("vector", "vector_photo"):
        np.testing.assert_allclose(np.linalg.norm(rows[col].to_numpy(), axis=1), 1.0, atol=1e-5)
    shared = rows.filter(rows["descriptor"] == "a round shape")["classes"].to_list()[0]
    names = toyworld.class_names()
    assert sorted(names[c] for c in shared) == sorted(n for n, ds in toyworld.descriptors().items() if "a round shape" in ds)


def test_imagenet_folder_uses_the_published_bank(quick_root, tmp_path, monkeypatch):
    from dagster import DagsterInstance

    src, _, _ = quick_root
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    root = tmp_path / "artifacts"
    shutil.copytree(src / "checkpoints", root / "checkpoints")
    val = tmp_path / "imagenet" / "val"
    wnids = [f"n{i:08d}" for i in range(1000)]
    val.mkdir(parents=True)
    (tmp_path / "imagenet" / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(wnids)))
    for w in wnids[:2]:
        (val / w).mkdir()
        Image.new("RGB", (32, 32), (200, 10, 10)).save(val / w / "a.JPEG")
    reg = tmp_path / "registry.toml"
    reg.write_text(f'[datasets.inet]\nkind = "imagenet"\nroot = "{val}"\n')
    monkeypatch.setenv("CLIPLAB_REFERENCE_DIR", str(SHARED_DATA))
    instance.add_dynamic_partitions("dataset", ["inet"])
    res = materialize([data.dataset_manifest, descriptors.descriptor_embeddings], instance=instance,
                      partition_key=partition_key("toy-vit.s0", "inet"), resources=resources_from_env(str(root), str(reg)))
    assert res.success
    rows = LanceStore(uri=str(root / "lancedb")).table("descriptor_embeddings").to_polars().collect()
    assert rows.height == 4229 and set(rows["dataset"]) == {"inet"}
    meta = res.asset_materializations_for_node("descriptor_embeddings")[0].metadata
    assert meta["descriptors shared by several classes"].value == 500


def test_own_descriptor_file_matched_by_class_name_and_missing_bank(tmp_path):
    import json

    import pytest
    from PIL import Image

    from cliplab.errors import CliplabError
    from resources.datasets import DatasetCatalog
    from resources.reference_data import ReferenceData

    for c in ("cat", "dog"):
        (tmp_path / "pets" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "pets" / c / "a.png")
    good = tmp_path / "d.json"  # the file lists dog first: classes are matched by name, not position
    good.write_text(json.dumps({"Dog": ["fur", "a wagging tail"], "cat": ["whiskers", "fur"]}))
    reg = tmp_path / "r.toml"

    def bank(content=None):
        if content is not None:
            good.write_text(content if isinstance(content, str) else json.dumps(content))
        reg.write_text(f'[datasets.pets]\nkind = "imagefolder"\nroot = "{tmp_path / "pets"}"\ndescriptors = "{good}"\n'
                       f'[datasets.plain]\nkind = "imagefolder"\nroot = "/x"\n')
        catalog = DatasetCatalog(registry=str(reg))
        return descriptors.bank_for(catalog.spec("pets"), ReferenceData(cache_dir=str(tmp_path)), catalog)

    b = bank()
    assert b.class_names == ("cat", "dog")
    assert b.descriptors == ("whiskers", "fur", "a wagging tail") and b.classes[1] == (0, 1) and b.classes[2] == (1,)
    for content, message in [
        ({"cat": "whiskers", "dog": ["fur"]}, "class 'cat': descriptors must be a non-empty list of non-empty strings"),
        ([], "must be a JSON object"), ({}, "must be a JSON object"),
        ({"cat": ["x"], "dog": [""]}, "class 'dog'"),
        ({"cat": ["x"], "dog": ["y"], "cow": ["z"]}, r"classes not in the dataset: \['cow'\]"),
        ({"cat": ["x"]}, r"dataset classes without descriptors: \['dog'\]"),
        ({"cat": ["x"], "Cat": ["y"], "dog": ["z"]}, "are the same class"),
        ("{not json", "is not JSON"),
    ]:
        with pytest.raises(CliplabError, match=message):
            bank(content)
    with pytest.raises(CliplabError, match="dataset 'plain' has no descriptor bank.*descriptors ="):
        catalog = DatasetCatalog(registry=str(reg))
        descriptors.bank_for(catalog.spec("plain"), ReferenceData(cache_dir=str(tmp_path)), catalog)


def test_class_descriptors_are_the_nearest_descriptors(quick_root):
    import polars as pl

    root, _, result = quick_root
    cd = pl.read_parquet(root / "class_descriptors/model=toy-vit.s0/dataset=toyworld/part-0.parquet")
    bank = LanceStore(uri=str(root / "lancedb")).table("descriptor_embeddings").to_polars().collect().sort("descriptor_index")
    classes = pl.read_parquet(root / "class_text_embeddings/model=toy-vit.s0/dataset=toyworld/part-0.parquet")
    u = min(50, bank.height)
    assert cd.height == 12 * u
    cos = classes["vector"].to_numpy() @ bank["vector"].to_numpy().T
    for k in (0, 7):
        rows = cd.filter(pl.col("class_index") == k).sort("rank")
        assert rows["rank"].to_list() == list(range(u))
        assert rows["descriptor_index"].to_list() == list(np.argsort(-cos[k], kind="stable")[:u])
        np.testing.assert_allclose(rows["cosine"].to_numpy(), np.sort(cos[k])[::-1][:u], atol=1e-6)
        assert rows["descriptor"].to_list() == [bank["descriptor"][i] for i in rows["descriptor_index"]]

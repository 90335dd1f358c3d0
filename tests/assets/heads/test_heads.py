"""head_contributions materialised on a copy of the quick toyworld run: rows, exactness, re-runs, NN queries."""

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

PART = "model=toy-vit.s0/dataset=toyworld/part-0.parquet"
MODEL, DATASET = "toy-vit.s0", "toyworld"
N_IMAGES, N_LAYERS, N_HEADS, DIM = 96, 4, 4, 128


def _materialise(root, instance):
    from dagster import materialize

    from assets.heads import contributions as heads
    from assets.partitions import partition_key
    from pipelines.definitions import resources_from_env

    return materialize([heads.head_contributions], instance=instance, partition_key=partition_key(MODEL, DATASET),
                       resources=resources_from_env(str(root)), raise_on_error=False)


@pytest.fixture(scope="module")
def heads_root(quick_root, tmp_path_factory):
    """A copy of the quick artifact root with head_contributions materialised once (other tests keep the original)."""
    src, instance, _ = quick_root
    root = tmp_path_factory.mktemp("heads") / "artifacts"
    shutil.copytree(src, root)
    result = _materialise(root, instance)
    assert result.success
    return root, instance, result


def _rows(root) -> pl.DataFrame:
    import lancedb

    table = lancedb.connect(str(root / "lancedb")).open_table("head_contributions")
    return pl.from_arrow(table.to_arrow()).filter((pl.col("model") == MODEL) & (pl.col("dataset") == DATASET))


def _vectors(rows: pl.DataFrame, image_id: str) -> np.ndarray:
    """(L, H, d) stored head vectors of one image, in layer/head order."""
    r = rows.filter(pl.col("image_id") == image_id).sort("layer", "head")
    assert r["layer"].to_list() == [l for l in range(N_LAYERS) for _ in range(N_HEADS)]
    assert r["head"].to_list() == list(range(N_HEADS)) * N_LAYERS
    return np.stack(r["vector"].to_numpy()).reshape(N_LAYERS, N_HEADS, DIM)


def test_rows_columns_and_metadata(heads_root):
    import pyarrow as pa

    root, _, result = heads_root
    rows = _rows(root)
    assert len(rows) == N_IMAGES * N_LAYERS * N_HEADS
    assert {"model", "dataset", "layer", "head", "image_id", "vector"} <= set(rows.columns)
    assert rows.select("image_id", "layer", "head").is_duplicated().sum() == 0
    manifest = pl.read_parquet(root / "dataset_manifest" / PART)
    assert sorted(rows["image_id"].unique().to_list()) == sorted(manifest["image_id"].to_list())
    assert sorted(rows["layer"].unique().to_list()) == list(range(N_LAYERS))
    assert sorted(rows["head"].unique().to_list()) == list(range(N_HEADS))
    import lancedb

    schema = lancedb.connect(str(root / "lancedb")).open_table("head_contributions").schema
    assert schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert schema.field("layer").type == pa.int32() and schema.field("head").type == pa.int32()
    assert schema.field("image_id").type == pa.string()
    meta = result.asset_materializations_for_node("head_contributions")[0].metadata
    assert meta["dagster/row_count"].value == N_IMAGES * N_LAYERS * N_HEADS
    assert meta["layers decomposed"].value == list(range(N_LAYERS))
    assert meta["heads per layer"].value == N_HEADS
    assert meta["images/s"].value > 0
    assert 0.0 <= meta["max |Σ parts − e|"].value <= 1e-5
    print(f"\nhead_contributions: {meta['dagster/row_count'].value} rows, {meta['images/s'].value} images/s, "
          f"max |Σ parts − e| = {meta['max |Σ parts − e|'].value:.3g}")


def test_vectors_equal_fresh_decomposition_and_parts_sum_to_embedding(heads_root):
    import torch

    from cliplab.heads.decomposition import decompose_image
    from resources.datasets import DatasetCatalog
    from resources.models import ModelZoo

    root, _, _ = heads_root
    m = ModelZoo(artifacts_root=str(root), device="cpu").load(MODEL)
    catalog = DatasetCatalog(artifacts_root=str(root))
    batch, images = next(catalog.image_batches(catalog.open(DATASET), m.preprocess, batch_size=2))
    ids = batch["image_id"].to_list()
    assert len(ids) == 2
    fresh = decompose_image(m.model, images, layers=N_LAYERS)
    rows = _rows(root)
    stored = np.stack([_vectors(rows, i) for i in ids])
    assert stored.shape == tuple(fresh.heads.shape)
    np.testing.assert_allclose(stored, fresh.heads.numpy(), rtol=0, atol=1e-6)
    assert np.abs(stored).max() > 1e-3  # not all zeros

    terms = pl.read_parquet(root / "head_terms" / PART).filter(pl.col("image_id").is_in(ids))
    terms = terms.sort(pl.col("image_id").replace_strict({i: k for k, i in enumerate(ids)}))
    assert terms["image_id"].to_list() == ids
    ln_pre = np.stack(terms["ln_pre"].to_numpy())
    mlps = np.stack(terms["mlps"].to_list()).astype(np.float32)
    assert mlps.shape == (2, N_LAYERS, DIM)
    rest = np.asarray(terms["rest"].to_list(), dtype=np.float32).reshape(2, -1, DIM)
    assert rest.shape[1] == 0  # all 4 layers are split into heads
    total = ln_pre + mlps.sum(1) + rest.sum(1) + stored.sum((1, 2))
    feats = pl.read_parquet(root / "patch_features" / PART, columns=["image_id", "embedding"])
    emb = np.stack([feats.filter(pl.col("image_id") == i)["embedding"].to_numpy()[0] for i in ids])
    err = np.abs(total - emb).max()
    print(f"\nstored parts vs patch_features embedding: max |Σ − e| = {err:.3g}")
    assert err <= 1e-5
    # and without the heads the parts are far from the embedding (the check has teeth)
    assert np.abs(total - stored.sum((1, 2)) - emb).max() > 1e-3
    np.testing.assert_allclose(emb, fresh.embedding.numpy(), rtol=0, atol=1e-5)
    assert torch.is_tensor(fresh.heads)


def test_nearest_neighbour_query_returns_the_image_itself(heads_root):
    import lancedb

    root, _, _ = heads_root
    rows = _rows(root).filter((pl.col("layer") == 3) & (pl.col("head") == 1))
    table = lancedb.connect(str(root / "lancedb")).open_table("head_contributions")
    for image_id in rows["image_id"].to_list()[:3]:
        vec = np.asarray(rows.filter(pl.col("image_id") == image_id)["vector"].to_list()[0], dtype=np.float32)
        hits = (table.search(vec).where(f"layer = 3 AND head = 1 AND model = '{MODEL}' AND dataset = '{DATASET}'")
                .limit(8).to_polars())
        assert len(hits) == 8
        assert hits["image_id"][0] == image_id
        assert (hits["layer"] == 3).all() and (hits["head"] == 1).all()
        assert hits["image_id"].n_unique() == 8


def test_rematerialising_replaces_without_duplicates(heads_root):
    root, instance, _ = heads_root
    before = _rows(root).sort("image_id", "layer", "head")
    result = _materialise(root, instance)
    assert result.success
    after = _rows(root).sort("image_id", "layer", "head")
    assert len(after) == N_IMAGES * N_LAYERS * N_HEADS
    assert after.select("image_id", "layer", "head").is_duplicated().sum() == 0
    np.testing.assert_allclose(np.stack(after["vector"].to_numpy()), np.stack(before["vector"].to_numpy()), atol=1e-6)


def test_fewer_layers_shrinks_the_partition_and_rest_terms_still_sum(heads_root):
    """layers=2: only layers 2–3 are split; layers 0–1 go to `rest`, old rows of layers 0–1 disappear."""
    from dagster import materialize

    from assets.heads import contributions as heads
    from assets.partitions import partition_key
    from pipelines.definitions import resources_from_env

    root, instance, _ = heads_root
    result = materialize([heads.head_contributions], instance=instance, partition_key=partition_key(MODEL, DATASET),
                         resources=resources_from_env(str(root)),
                         run_config={"ops": {"head_contributions": {"config": {"layers": 2}}}})
    assert result.success
    rows = _rows(root)
    assert len(rows) == N_IMAGES * 2 * N_HEADS
    assert sorted(rows["layer"].unique().to_list()) == [2, 3]
    terms = pl.read_parquet(root / "head_terms" / PART)
    rest = np.stack([np.stack(r) for r in terms["rest"].to_list()])
    assert rest.shape == (N_IMAGES, 2, DIM)
    heads_sum = np.stack([np.stack(rows.filter(pl.col("image_id") == i)["vector"].to_numpy()).sum(0)
                          for i in terms["image_id"]])
    total = np.stack(terms["ln_pre"].to_numpy()) + np.stack([np.stack(m) for m in terms["mlps"].to_list()]).sum(1) \
        + rest.sum(1) + heads_sum
    assert np.abs(total - np.stack(terms["embedding"].to_numpy())).max() <= 1e-5
    assert result.asset_materializations_for_node("head_contributions")[0].metadata["layers decomposed"].value == [2, 3]


def test_resnet_model_fails_the_partition_with_a_clear_message(heads_root):
    import open_clip
    from dagster import materialize

    from assets.heads import contributions as heads
    from assets.partitions import partition_key
    from pipelines.definitions import resources_from_env
    from resources.models import ModelZoo
    from resources.registry import ModelSpec

    class ResNetZoo(ModelZoo):
        def load(self, key):
            model = open_clip.CLIP(embed_dim=16, vision_cfg={"layers": (1, 1, 1, 1), "width": 8, "image_size": 32, "head_width": 8},
                                   text_cfg={"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1})
            return self._finish(ModelSpec(key, "toy", arch="local-dir"), model, None, "cpu",
                                open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)

    root, instance, _ = heads_root
    before = len(_rows(root))
    resources = resources_from_env(str(root))
    resources["zoo"] = ResNetZoo(artifacts_root=str(root), device="cpu")
    result = materialize([heads.head_contributions], instance=instance, partition_key=partition_key(MODEL, DATASET),
                         resources=resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "ResNet CLIP image towers have no per-layer attention heads" in str(failure.event_specific_data.error)
    assert len(_rows(root)) == before  # the old partition is untouched


def test_text_bank_embeddings(quick_root, tmp_path, monkeypatch):
    """The two published banks (3,498 each, from ../shared/data) and toyworld's phrase bank, one LanceDB commit."""
    from dagster import DagsterInstance, materialize

    from assets.heads.contributions import text_bank_embeddings
    from assets.partitions import partition_key
    from cliplab.toy import toyworld
    from pipelines.definitions import resources_from_env
    from resources.lance import LanceStore

    src, _, _ = quick_root
    root = tmp_path / "art"
    shutil.copytree(src / "checkpoints", root / "checkpoints")
    shutil.copytree(src / "toyworld", root / "toyworld")
    monkeypatch.setenv("CLIPLAB_REFERENCE_DIR", str(Path(__file__).resolve().parents[4] / "shared" / "data"))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    for _ in range(2):  # the second run replaces, never appends
        res = materialize([text_bank_embeddings], instance=instance, partition_key=partition_key("toy-vit.s0", "toyworld"),
                          resources=resources_from_env(str(root)))
        assert res.success
    rows = LanceStore(uri=str(root / "lancedb")).table("text_bank_embeddings").to_polars().collect()
    counts = dict(rows.group_by("bank").len().iter_rows())
    assert counts == {"image_descriptions_general": 3498, "google_3498_english": 3498,
                      "toyworld_phrases": len(toyworld.phrase_bank())}
    phrases = rows.filter(rows["bank"] == "toyworld_phrases").sort("text_index")
    assert list(zip(phrases["text"], phrases["family"])) == toyworld.phrase_bank()
    np.testing.assert_allclose(np.linalg.norm(rows["vector"].to_numpy(), axis=1), 1.0, atol=1e-5)

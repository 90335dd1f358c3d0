"""Mutual knowledge against toyworld's ground truth, with the toy CLIP trained by the default configuration (slow)."""

import numpy as np
import polars as pl
import pytest
from dagster import materialize

from assets import data, encodings
from assets.mutual import concepts, descriptors
from assets.mutual import knowledge as mutual
from assets.partitions import partition_key
from cliplab.toy import toyworld as tw
from cliplab.toy.clip import build_toy_clip
from cliplab.toy.groundtruth import descriptor_grounding
from pipelines.definitions import resources_from_env
from resources.models import as_weights, save_checkpoint

pytestmark = pytest.mark.slow


def _read(root, asset, model="toy-vit.s0"):
    return pl.read_parquet(root / asset / f"model={model}" / "dataset=toyworld" / "part-0.parquet")


def test_dv_descriptors_name_parts_present_in_the_image(trained_root):
    root, _, _, _ = trained_root
    resources = resources_from_env(str(root))
    ids, maps = resources["datasets"].part_maps("toyworld")
    present = {i: {tw.PART_NAMES[p] for p in np.unique(m) if p > 0} for i, m in zip(ids, maps)}
    bank = [d for ds in tw.descriptors().values() for d in ds]
    bank = list(dict.fromkeys(bank))  # D in first-appearance order, as descriptor_embeddings stores it
    dv = mutual.dv_sequences(pl.scan_parquet(root / "visual_concept_descriptors" / "**" / "*.parquet"))
    names = tw.class_names()
    for branch in ("pca", "kmeans"):
        rows = dv.filter(pl.col("branch") == branch)
        hit, chance = descriptor_grounding(rows["dv"].to_list(), [names[k] for k in rows["label"]],
                                           [present[i] for i in rows["image_id"]], bank)
        print(f"\nD_v grounded fraction ({branch}): {hit:.3f} (random descriptors {chance:.3f}, {len(rows)} images)")
        assert hit >= 0.5 and hit > chance + 0.2


def test_trained_toy_clip_has_more_mutual_knowledge_than_random_weights(trained_root):
    root, instance, _, _ = trained_root
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    save_checkpoint(as_weights(build_toy_clip(), "toy-vit"), root / "checkpoints" / "toy-vit.random", extra={"random_init": True})
    instance.add_dynamic_partitions("model", ["toy-vit.random"])
    chain = [data.dataset_manifest, data.class_text_embeddings, encodings.image_encodings, concepts.prominent_patches,
             concepts.concept_clusters, descriptors.descriptor_embeddings, descriptors.class_descriptors,
             mutual.visual_concept_descriptors, mutual.mi_curves, mutual.mi_summary]
    assert materialize(chain, resources=resources_from_env(str(root)), instance=instance,
                       partition_key=partition_key("toy-vit.random", "toyworld")).success
    assert materialize([mutual.model_comparison], resources=resources_from_env(str(root)), instance=instance).success
    trained, random = _read(root, "mi_summary"), _read(root, "mi_summary", "toy-vit.random")
    for branch in ("pca", "kmeans"):
        print(f"\nAUC ({branch}): trained {trained[f'auc_{branch}'][0]:.3f}, random weights {random[f'auc_{branch}'][0]:.3f}; "
              f"MI {trained[f'mi_{branch}'][0]:.3f} vs {random[f'mi_{branch}'][0]:.3f}; "
              f"top-1 {trained['top1'][0]:.2f} vs {random['top1'][0]:.2f}")
        assert trained[f"auc_{branch}"][0] > random[f"auc_{branch}"][0]
    comparison = pl.read_parquet(root / "model_comparison" / "part-0.parquet")
    fits = pl.read_parquet(root / "model_comparison_fits" / "part-0.parquet")
    assert set(comparison["model"]) >= {"toy-vit.s0", "toy-vit.random"}
    fit = fits.filter((pl.col("dataset") == "toyworld") & (pl.col("branch") == "pca")).row(0, named=True)
    assert fit["slope"] > 0  # more mutual knowledge, higher accuracy
    print(f"\ntop-1 vs AUC (PCA) on toyworld: slope {fit['slope']:.2f}, intercept {fit['intercept']:.2f}")

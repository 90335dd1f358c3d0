"""Mutual knowledge, steps 6–11 and the evaluations, materialised on toyworld: each stored number recomputed from its inputs."""

import lancedb
import numpy as np
import polars as pl
import pytest
from dagster import DagsterInstance, materialize

from assets.mutual import evaluations
from assets.mutual import knowledge as mutual
from assets.partitions import partition_key
from cliplab.mutual.information import auc, importance_order, mi_curve
from cliplab.toy import toyworld as tw
from pipelines.definitions import resources_from_env

KEY = {"model": "toy-vit.s0", "dataset": "toyworld"}


def _read(root, asset):
    return pl.read_parquet(root / asset / "model=toy-vit.s0" / "dataset=toyworld" / "part-0.parquet")


def _bank(root):
    t = lancedb.connect(str(root / "lancedb")).open_table("descriptor_embeddings").to_polars()
    return t.filter(pl.col("model") == "toy-vit.s0").sort("descriptor_index").collect()


def test_visual_concept_descriptors_recomputed_from_inputs(quick_root):
    root, _, _ = quick_root
    dv = _read(root, "visual_concept_descriptors")
    clusters = _read(root, "concept_clusters")
    feats = _read(root, "patch_features").select("image_id", "embedding")
    bank = _bank(root)
    D = np.stack(bank["vector"].to_numpy())
    assert set(dv["branch"]) == {"pca", "kmeans"} and len(dv) > 0
    # every row is a concept the image really has, in that branch
    have = {(r[0], "pca", r[1]) for r in clusters.select("image_id", "pca_concept").unique().iter_rows()}
    have |= {(r[0], "kmeans", r[1]) for r in clusters.select("image_id", "kmeans_concept").unique().iter_rows()}
    assert {(i, b, c) for i, b, c in dv.select("image_id", "branch", "concept").iter_rows()} <= have
    joined = dv.join(feats, on="image_id")
    e = np.stack(joined["embedding_right"].to_numpy())
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    concept = np.stack(joined["embedding"].to_numpy())
    assert (np.linalg.norm(concept, axis=1) <= 1 + 1e-5).all()  # a mean of unit vectors, not re-normalised
    for row, image, feat in zip(joined.iter_rows(named=True), e, concept):
        idx = row["descriptor_index"]
        assert len(idx) <= 3 and len(set(idx)) == len(idx)
        assert row["descriptor"] == [bank["descriptor"][i] for i in idx]
        np.testing.assert_allclose(row["importance"], D[idx] @ image, atol=1e-4)
        np.testing.assert_allclose(row["similarity"], D[idx] @ feat, atol=1e-4)
        np.testing.assert_allclose(D[row["descriptor_index_no_ot"]] @ feat, np.sort(D @ feat)[::-1][:3], atol=1e-5)
        cx, cy, a, b, _ = row["ellipse"]
        assert 0 <= cx < 64 and 0 <= cy < 64 and a >= b > 0


def test_concept_embeddings_equal_encoding_every_concept_alone(quick_root):
    """visual_concept_descriptors prompts and encodes each distinct (image, ellipse) once and takes the image
    embedding from patch_features: encoding every concept's prompts on their own, as the reference does, gives
    the stored ellipses and embeddings (to float tolerance); the partition really has shared ellipses."""
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from torchvision.transforms.functional import gaussian_blur

    from assets.data import partition_view
    from assets.mutual.concepts import patch_grid
    from cliplab.mutual.visual_prompts import concept_features, concept_regions, fit_ellipse, visual_prompts

    root, _, _ = quick_root
    res = resources_from_env(str(root))
    datasets, zoo, store = res["datasets"], res["zoo"], res["store"]
    dv = _read(root, "visual_concept_descriptors")
    shared = dv.select("image_id", pl.col("ellipse").cast(pl.List(pl.Float32))).unique()
    assert len(shared) < len(dv)  # some PCA and k-means concepts share an ellipse: encoded once
    grid = patch_grid(store, **KEY)
    L = int(pq.read_schema(store.table_path("concept_clusters", **KEY)).metadata[b"L"])
    grids = mutual.concept_grids(store, KEY["model"], KEY["dataset"], grid[0] * grid[1])
    m = zoo.load(KEY["model"])
    mean = torch.tensor(m.mean)[None, :, None, None]
    std = torch.tensor(m.std)[None, :, None, None]
    rows, images = next(iter(datasets.image_batches(partition_view(datasets, store, **KEY), m.preprocess, 12)))
    pixels = (images * std + mean).clamp(0, 1)
    blurred = gaussian_blur(pixels, [11, 11], [2.0, 2.0])
    checked = 0
    for b, image_id in enumerate(rows["image_id"].to_list()):
        for branch in mutual.BRANCHES:
            if image_id not in grids[branch]:
                continue
            regions = concept_regions(grids[branch][image_id][None], grid, L)[0]
            for c in range(L):
                stored = dv.filter((pl.col("image_id") == image_id) & (pl.col("branch") == branch) & (pl.col("concept") == c))
                if not regions[c].any():
                    assert stored.is_empty()
                    continue
                region = F.interpolate(torch.from_numpy(regions[c])[None, None].float(), size=pixels.shape[-2:], mode="nearest")[0] > 0.5
                ellipse = fit_ellipse(region)
                with torch.inference_mode():
                    feat = concept_features(lambda x: m.model.encode_image((x - mean) / std).float(),
                                            visual_prompts(pixels[b: b + 1], ellipse, blurred=blurred[b: b + 1]))[0]
                np.testing.assert_array_equal(stored["ellipse"][0].to_numpy(), ellipse[0].numpy())
                np.testing.assert_allclose(stored["embedding"][0].to_numpy(), feat.numpy(), atol=1e-5)
                checked += 1
    assert checked >= 20


def test_images_without_prominent_region_are_skipped_not_crashed(quick_root):
    root, _, _ = quick_root
    masks = _read(root, "prominent_patches")
    dv_ids = set(_read(root, "visual_concept_descriptors")["image_id"])
    curve_ids = set(_read(root, "mi_curves")["image_id"])
    empty = set(masks.filter(pl.col("no_prominent_region"))["image_id"])
    assert not (empty & dv_ids) and not (empty & curve_ids)
    assert curve_ids == dv_ids


def test_mi_curves_recomputed_from_dv_and_d_y(quick_root):
    root, _, _ = quick_root
    dv = _read(root, "visual_concept_descriptors")
    curves = _read(root, "mi_curves")
    d_y = _read(root, "class_descriptors").filter(pl.col("rank") < 7)  # toyworld's u (registry mi_u)
    assert curves.schema["curve"] == pl.List(pl.Float64)
    for row in curves.head(40).iter_rows(named=True):
        g = dv.filter((pl.col("image_id") == row["image_id"]) & (pl.col("branch") == row["branch"])).sort("concept")
        sim = np.zeros(200)
        for ds, ss in zip(g["descriptor_index"], g["importance"]):
            sim[ds.to_list()] = ss.to_list()
        D_v, _ = importance_order(g["descriptor_index"].to_list(), sim)
        D_y = d_y.filter(pl.col("class_index") == row["pred"]).sort("rank")["descriptor_index"].to_list()
        expected = mi_curve(D_v, D_y)
        np.testing.assert_allclose(row["curve"], expected)
        assert len(row["curve"]) == len(D_v) + 1 == row["n_dv"] + 1 and row["curve"][-1] == 0
        assert row["matches"] == len(set(D_v) & set(D_y))
        assert row["auc"] == pytest.approx(auc(expected))
        if row["matches"]:
            assert row["mi"] == pytest.approx(np.log(len(D_v)) + np.log(7) + np.log(row["matches"]))


def test_summary_comparison_and_evaluations(quick_root):
    root, _, _ = quick_root
    summary = _read(root, "mi_summary")
    assert summary.height == 1 and summary["family"][0] == "vit"
    preds = _read(root, "zero_shot_predictions")
    assert summary["top1"][0] == pytest.approx(preds["correct"].mean())  # a fraction, as everywhere
    comparison = pl.read_parquet(root / "model_comparison" / "part-0.parquet")
    assert comparison.filter(pl.col("model") == "toy-vit.s0")["auc_pca"][0] == pytest.approx(summary["auc_pca"][0])
    ev = _read(root, "concept_eval")
    assert set(zip(ev["branch"], ev["order"])) == {(b, o) for b in ("pca", "kmeans") for o in ("importance", "random")}
    for row in ev.iter_rows(named=True):
        assert -1 <= row["acc_drop"] <= 1 and -1 <= row["acc_inc"] <= 1
        # step 0 of deletion is the untouched image, step 0 of insertion the fully blurred one
        assert len(row["deletion_curve"]) == len(row["insertion_curve"]) >= 2
        assert row["entropy_ot"] >= 0 and row["entropy_no_ot"] >= 0
        acc_d, acc_i = np.array(row["deletion_accuracy"]), np.array(row["insertion_accuracy"])
        assert ((0 <= acc_d) & (acc_d <= 1)).all() and len(acc_i) == len(row["insertion_curve"])
        assert row["acc_drop"] == pytest.approx(acc_d[0] - acc_d[1:].mean())
        assert row["acc_inc"] == pytest.approx(acc_i[1:].mean() - acc_i[0])
    zs = _read(root, "descriptor_zero_shot")
    assert 0 <= zs["plain_top1"][0] <= 1 and zs["gain"][0] == pytest.approx(zs["augmented_top1"][0] - zs["plain_top1"][0])
    added = _read(root, "descriptor_zero_shot_added")
    own = {c: set(d) for c, d in enumerate(tw.descriptors().values())}
    names = tw.class_names()
    for c, d in added.select("class_index", "descriptor").iter_rows():
        assert d not in own[c], (names[c], d)  # only new descriptors are added


def test_options_ground_truth_target_and_textbook_convention(quick_root, tmp_path):
    root, instance, _ = quick_root
    resources = resources_from_env(str(root))
    for convention in ("reference", "textbook"):
        result = materialize([mutual.mi_curves], resources=resources, instance=instance,
                             partition_key=partition_key("toy-vit.s0", "toyworld"),
                             run_config={"ops": {"mi_curves": {"config": {"target": "ground_truth", "convention": convention}}}})
        assert result.success
        curves = _read(root, "mi_curves")
        d_y = _read(root, "class_descriptors").filter(pl.col("rank") < 7)
        for row in curves.filter(pl.col("matches") > 0).head(10).iter_rows(named=True):
            D_y = set(d_y.filter(pl.col("class_index") == row["label"])["descriptor_index"])
            n, c = row["n_dv"], row["matches"]
            assert row["matches"] <= len(D_y)
            expected = np.log(n) + np.log(7) + (np.log(c) if convention == "reference" else -np.log(c))
            assert row["mi"] == pytest.approx(expected)
    # restore the default for the other tests
    assert materialize([mutual.mi_curves], resources=resources, instance=instance,
                       partition_key=partition_key("toy-vit.s0", "toyworld")).success


def test_bad_options_fail_early_and_keep_the_old_partition(quick_root):
    root, instance, _ = quick_root
    path = root / "mi_curves" / "model=toy-vit.s0" / "dataset=toyworld" / "part-0.parquet"
    before = path.read_bytes()
    for asset, cfg, message in ((mutual.mi_curves, {"target": "oracle"}, "target"),
                                (mutual.mi_curves, {"convention": "shannon"}, "convention"),
                                (evaluations.descriptor_zero_shot, {"branch": "svd"}, "branch")):
        result = materialize([asset], resources=resources_from_env(str(root)), instance=instance, raise_on_error=False,
                             partition_key=partition_key("toy-vit.s0", "toyworld"),
                             run_config={"ops": {asset.key.path[-1]: {"config": cfg}}})
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert message in str(failure.step_failure_data.error)
    assert path.read_bytes() == before


def test_model_comparison_without_summaries_says_so(tmp_path):
    result = materialize([mutual.model_comparison], resources=resources_from_env(str(tmp_path / "empty")),
                         instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "mi_summary" in str(failure.step_failure_data.error)


def test_chain_on_a_folder_with_a_one_image_class_and_a_blank_image(quick_root, tmp_path):
    """The reference crashes on a class with one image and on an image without foreground; here they run through."""
    import json
    import shutil

    from PIL import Image

    from assets import data, encodings
    from assets.mutual import concepts, descriptors

    src, _, _ = quick_root
    root = tmp_path / "artifacts"
    shutil.copytree(src / "checkpoints", root / "checkpoints")
    batch = tw.generate(0, "val", 24)
    folder = tmp_path / "folder"
    kept = {"house": 2, "car": 1, "tree": 2}  # 24 samples hold two of each class
    for image, label in zip(batch.images, batch.labels):
        name = tw.class_names()[label]
        if kept.get(name, 0) > 0:
            kept[name] -= 1
            p = folder / name / f"{kept[name]}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(p)
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "tree" / "blank.png")
    desc = tmp_path / "descriptors.json"
    desc.write_text(json.dumps({c: tw.descriptors()[c] for c in ("car", "house", "tree")}))
    registry = tmp_path / "registry.toml"
    registry.write_text(f'[datasets.tiny]\nkind = "imagefolder"\nroot = "{folder}"\ndescriptors = "{desc}"\n')
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["tiny"])
    chain = [data.dataset_manifest, data.class_text_embeddings, encodings.image_encodings, concepts.prominent_patches,
             concepts.concept_clusters, descriptors.descriptor_embeddings, descriptors.class_descriptors,
             mutual.visual_concept_descriptors, mutual.mi_curves, mutual.mi_summary]
    result = materialize(chain, resources=resources_from_env(str(root), registry=str(registry)), instance=instance,
                         partition_key=partition_key("toy-vit.s0", "tiny"),
                         run_config={"ops": {"concept_clusters": {"config": {"L": 5}}}})
    assert result.success
    read = lambda a: pl.read_parquet(root / a / "model=toy-vit.s0" / "dataset=tiny" / "part-0.parquet")
    masks = read("prominent_patches")
    assert masks.height == 6 and masks.filter(pl.col("label") == 0).height == 1  # "car" sorts first: the one-image class
    curves = read("mi_curves")
    with_region = set(masks.filter(~pl.col("no_prominent_region"))["image_id"])
    assert set(curves["image_id"]) == with_region
    # D_ŷ has at most |D| descriptors here (fewer than u = 50): MI uses all of them
    bank = dict.fromkeys(d for c in ("car", "house", "tree") for d in tw.descriptors()[c])
    assert read("class_descriptors").group_by("class_index").len()["len"].max() == len(bank) == 19

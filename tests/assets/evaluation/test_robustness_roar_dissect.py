"""zero_shot_robustness, roar and neuron_concepts materialised in process on a copy of the quick toyworld root (and on a
3-class image folder), their numbers recomputed with `cliplab.evaluation` on the same inputs."""

import dataclasses
import math
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from dagster import DagsterInstance, materialize
from PIL import Image

from assets import data
from assets.evaluation import dissect, robustness
from assets.evaluation import roar as roar_assets
from assets.evaluation._common import pixel_model, subset
from assets.partitions import partition_key
from cliplab.evaluation.apgd import ATTACKS, robust_accuracy
from cliplab.evaluation.dissect import concept_probabilities, label_neurons, neuron_activations, soft_wpmi
from cliplab.evaluation.roar import RoarSplit, roar, roar_area
from cliplab.evaluation.saliency import SALIENCY_METHODS
from cliplab.toy import toyworld
from pipelines.definitions import resources_from_env
from resources.models import ModelZoo

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
MODEL, DATASET, FOLDER = "toy-vit.s0", "toyworld", "shapes3"
KEY = partition_key(MODEL, DATASET)
ROBUST = {"images": 32, "n_iter": 6, "n_target_classes": 3, "eps": [4.0, 1.0], "batch_size": 16}  # small: CPU
ROAR = {"train_images": 48, "test_images": 24, "fractions": [0.3, 0.7], "methods": ["simple_gradient", "grad_cam"],
        "batch_size": 16}
DISSECT = {"images": 64, "top_k": 8, "layer": -2}


@pytest.fixture(scope="module")
def env(quick_root, tmp_path_factory):
    """A copy of the quick root; a registry adding a 3-class image folder of toyworld renders and a second key for the
    toy CLIP's weights (a probe that is another model)."""
    src, _, _ = quick_root
    tmp = tmp_path_factory.mktemp("robust")
    root = tmp / "artifacts"
    for part in ("checkpoints", "toyworld", "dataset_manifest", "class_text_embeddings", "zero_shot_predictions"):
        shutil.copytree(src / part, root / part)
    batch = toyworld.generate(0, "val", 60)
    kept = {"house": 4, "car": 4, "tree": 4}
    for image, label in zip(batch.images, batch.labels):
        name = toyworld.class_names()[label]
        if kept.get(name, 0) > 0:
            kept[name] -= 1
            (tmp / "folder" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp / "folder" / name / f"{kept[name]}.png")
    assert not any(kept.values())
    registry = tmp / "registry.toml"
    registry.write_text(f'[datasets.{FOLDER}]\nkind = "imagefolder"\nroot = "{tmp / "folder"}"\nrobust_images = 9\n'
                        f'roar_train_images = 5\n\n[models."toy-probe"]\nkind = "checkpoint"\narch = "toy-vit"\n'
                        f'path = "{root / "checkpoints" / MODEL / "open_clip_model.safetensors"}"\n')
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", [MODEL])
    instance.add_dynamic_partitions("dataset", [DATASET, FOLDER])
    os.environ.setdefault("CLIPLAB_REFERENCE_DIR", str(SHARED_DATA))  # the published concept set, offline
    res = resources_from_env(str(root), registry=str(registry))
    assert materialize([data.dataset_manifest, data.class_text_embeddings], instance=instance, resources=res,
                       partition_key=partition_key(MODEL, FOLDER)).success
    return root, instance, res


def run(env, asset, cfg, dataset=DATASET, raise_on_error=True):
    _, instance, res = env
    name = asset.key.path[-1]
    return materialize([asset], instance=instance, partition_key=partition_key(MODEL, dataset), resources=res,
                       raise_on_error=raise_on_error, run_config={"ops": {name: {"config": cfg}}})


def metadata(result, name):
    return {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}


def stored(env, name, dataset=DATASET):
    return env[2]["store"].read(name, model=MODEL, dataset=dataset).collect()


def pixels_of(res, view, preprocess, batch_size):
    rows, xs = zip(*res["datasets"].image_batches(view, preprocess, batch_size))
    return pl.concat(rows), torch.cat(xs)


@pytest.fixture(scope="module")
def robust_run(env):
    return run(env, robustness.zero_shot_robustness, ROBUST)


@pytest.fixture(scope="module")
def roar_run(env):
    return run(env, roar_assets.roar, ROAR)


@pytest.fixture(scope="module")
def dissect_run(env):
    return run(env, dissect.neuron_concepts, DISSECT)


# ------------------------------------------------------------------------------------------------ zero_shot_robustness
def test_robust_accuracy_is_autoattacks_sequence_on_the_same_subset(env, robust_run, assert_figure):
    _, _, res = env
    df = stored(env, "zero_shot_robustness")
    stages = ["clean", "apgd-ce", "apgd-ce+apgd-t"]
    assert df["eps_255"].to_list() == [1.0] * 3 + [4.0] * 3 and df["attack"].to_list() == stages * 2
    assert (df["n_images"] == 32).all() and df["n_iter"].to_list() == [0, 6, 6] * 2
    pm = pixel_model(res["zoo"], res["store"], MODEL, DATASET)
    rows, x = pixels_of(res, subset(res["datasets"].open(DATASET), 32, 0), pm.to_pixels, 32)
    y = torch.from_numpy(rows["label"].to_numpy(writable=True))
    for eps in (1.0, 4.0):
        want = robust_accuracy(pm.logits, x, y, eps / 255, ATTACKS, seed=0, n_iter=6, n_target_classes=3, batch_size=16)
        got = df.filter(pl.col("eps_255") == eps)["accuracy"].to_list()
        assert got == pytest.approx([want.clean_accuracy, want.after_each["apgd-ce"], want.accuracy], abs=1e-12)
        assert got[0] > 0  # some points were attacked: the comparison is not vacuous
        assert got[0] >= got[1] >= got[2]  # each attack only removes points
    meta = metadata(robust_run, "zero_shot_robustness")
    assert meta["images"] == 32 and meta["targets per point"] == 3 and meta["skipped attacks"] == "none"
    assert assert_figure(meta, "accuracy vs eps")
    assert "| apgd-ce+apgd-t |" in meta["accuracy"] and meta["images/s"] > 0


def test_fewer_than_four_classes_runs_apgd_ce_only_on_the_registry_subset(env):
    result = run(env, robustness.zero_shot_robustness, {"n_iter": 5, "eps": [4.0]}, dataset=FOLDER)
    df = stored(env, "zero_shot_robustness", FOLDER)
    assert df["attack"].to_list() == ["clean", "apgd-ce"] and (df["n_images"] == 9).all()  # registry robust_images = 9
    meta = metadata(result, "zero_shot_robustness")
    assert meta["attacks"] == ["apgd-ce"] and meta["skipped attacks"].startswith("apgd-t: shapes3 has 3 classes")


# ---------------------------------------------------------------------------------------------------------------- roar
def test_roar_curves_are_the_retrained_probe_on_the_same_removals(env, roar_run):
    _, _, res = env
    df = stored(env, "roar")
    assert df["method"].to_list() == [m for m in ("simple_gradient", "grad_cam", "random") for _ in range(2)]
    assert df["fraction"].to_list() == [0.3, 0.7] * 3 and df["accuracy"].is_between(0, 1).all()
    curves = {m: g.sort("fraction") for (m,), g in df.group_by("method")}
    assert curves["random"]["area"].is_nan().all()
    for m in ("simple_gradient", "grad_cam"):
        area = roar_area(curves[m]["accuracy"], curves["random"]["accuracy"], [0.3, 0.7])
        assert curves[m]["area"].to_list() == pytest.approx([area, area], abs=1e-12)

    # one fraction recomputed with cliplab's `roar` from the images, maps and fill rebuilt here
    pm = pixel_model(res["zoo"], res["store"], MODEL, DATASET)
    train_view, test_view = roar_assets.roar_views(res["datasets"], res["datasets"].open(DATASET), 48, 24, 0)
    assert train_view.manifest["image_id"].str.starts_with("train/").all()
    assert test_view.manifest["image_id"].str.starts_with("val/").all()

    def split(view):
        rows, x = pixels_of(res, view, pm.to_pixels, 16)
        y = torch.from_numpy(rows["label"].to_numpy(writable=True))
        maps = torch.cat([SALIENCY_METHODS["grad_cam"](pm.encoder, x[s: s + 16], pm.text_for(y[s: s + 16])).half()
                          for s in range(0, len(x), 16)])
        return RoarSplit(x, y, maps)

    train, test = split(train_view), split(test_view)
    fill = train.pixels.double().mean(dim=(0, 2, 3)).float()

    @torch.no_grad()
    def encode(x):
        return torch.cat([F.normalize(pm.encoder(x[s: s + 16]), dim=-1) for s in range(0, len(x), 16)])

    want = roar(encode, train, test, fill, [0.7], seed=0)
    assert curves["grad_cam"]["accuracy"][1] == pytest.approx(want.method[0], abs=1e-12)
    assert curves["random"]["accuracy"][1] == pytest.approx(want.random[0], abs=1e-12)
    meta = metadata(roar_run, "roar")
    assert meta["train images"] == 48 and meta["test images"] == 24 and meta["splits"] == "train → val"
    assert meta["fill (per-channel train mean)"] == pytest.approx(fill.tolist(), abs=1e-4)
    assert set(meta["area vs random ↑"]) == {"simple_gradient", "grad_cam"}


def test_a_folder_dataset_is_split_50_50_with_the_registry_sizes(env):
    _, _, res = env
    folder = res["datasets"].open(FOLDER)
    train, test = roar_assets.roar_views(res["datasets"], folder, 100, 100, 0)
    ids_train, ids_test = set(train.manifest["image_id"]), set(test.manifest["image_id"])
    assert len(ids_train) == len(ids_test) == 6 and not ids_train & ids_test
    assert ids_train | ids_test == set(folder.manifest["image_id"])
    other, _ = roar_assets.roar_views(res["datasets"], folder, 100, 100, 1)
    assert set(other.manifest["image_id"]) != ids_train  # the seed draws the split
    result = run(env, roar_assets.roar, {"methods": ["grad_cam"], "fractions": [0.2, 0.8]}, dataset=FOLDER)
    meta = metadata(result, "roar")
    assert meta["train images"] == 5 and meta["test images"] == 6  # registry roar_train_images = 5; 6 test in the half
    assert meta["splits"] == "seeded 50/50 split of the images" and len(stored(env, "roar", FOLDER)) == 4


# ----------------------------------------------------------------------------------------------------- neuron_concepts
def dissect_inputs(res):
    m = res["zoo"].load(MODEL)
    _, x = pixels_of(res, subset(res["datasets"].open(DATASET), 64, 0), m.preprocess, 64)
    concepts = [p for p, _ in toyworld.phrase_bank()]
    with torch.no_grad():
        images = F.normalize(m.model.encode_image(x), dim=-1)
        texts = F.normalize(m.model.encode_text(m.tokenizer(concepts)), dim=-1)
    return neuron_activations(m.model.visual, x, 2), images, texts, concepts


def test_dissect_labels_are_soft_wpmi_on_the_same_activations(env, dissect_run, assert_figure):
    _, _, res = env
    df = stored(env, "neuron_concepts")
    assert len(df) == 128 and (df["layer"] == 2).all() and df["neuron"].to_list() == list(range(128))  # block -2 of 4
    acts, images, texts, concepts = dissect_inputs(res)
    scores = soft_wpmi(acts, concept_probabilities(images, texts), top_k=8)
    best, index = label_neurons(scores)
    assert df["concept"].to_list() == [concepts[i] for i in index]
    np.testing.assert_allclose(df["score"].to_numpy(), best.numpy(), rtol=1e-5, atol=1e-5)
    assert (df["second_score"] <= df["score"]).all() and (df["second_concept"] != df["concept"]).all()
    second = scores.scatter(1, index[:, None], -math.inf).max(1)
    assert df["second_concept"].to_list() == [concepts[i] for i in second.indices]

    # LanceDB: per neuron the unit mean of its top-8 images' embeddings
    rows = (res["lance"].table("neuron_concepts").search().where(f"model = '{MODEL}' AND dataset = '{DATASET}'")
            .limit(None).to_polars().sort("neuron"))
    vectors = np.stack(rows["vector"].to_numpy())
    want = F.normalize(images[acts.topk(8, dim=0).indices].mean(0), dim=-1).numpy()
    np.testing.assert_allclose(vectors, want, atol=1e-5)
    assert (rows["probe"] == MODEL).all() and rows["concept"].to_list() == df["concept"].to_list()
    meta = metadata(dissect_run, "neuron_concepts")
    assert meta["concept source"] == "toyworld.phrase_bank" and meta["concepts"] == 150 and meta["images"] == 64
    assert assert_figure(meta, "best scores")


def test_search_neurons_returns_the_nearest_vectors(env, dissect_run):
    _, _, res = env
    rows = res["lance"].table("neuron_concepts").search().limit(None).to_polars().sort("neuron")
    vectors = np.stack(rows["vector"].to_numpy())
    m = res["zoo"].load(MODEL)
    for text in ("a striped pattern", "a night sky"):
        query = dissect.text_embeddings(m, [text])[0].numpy()
        hits = dissect.search_neurons(res["lance"], MODEL, DATASET, 3 * query, k=5)  # the query is normalised
        order = np.argsort(-(vectors @ query), kind="stable")[:5]
        assert hits["neuron"][0] == order[0] and set(hits["neuron"]) == set(order.tolist())
        np.testing.assert_allclose(hits["similarity"].to_numpy(), np.sort(vectors @ query)[::-1][:5], atol=1e-5)
        assert hits["rank"].to_list() == [1, 2, 3, 4, 5]
    assert dissect.search_neurons(res["lance"], MODEL, FOLDER, query, k=5).is_empty()  # scoped to the partition


def test_concepts_are_the_published_20k_set_outside_toyworld(env):
    source, concepts = dissect.concept_set(env[2]["datasets"], env[2]["reference"], FOLDER)  # sha256-checked
    assert source.startswith("concepts_20k") and len(concepts) == 20000 and concepts[:3] == ["the", "of", "and"]


def test_another_probe_model_with_the_same_weights_gives_the_same_labels(env, dissect_run):
    before = stored(env, "neuron_concepts")
    result = run(env, dissect.neuron_concepts, {**DISSECT, "probe": "toy-probe"})
    assert metadata(result, "neuron_concepts")["probe"] == "toy-probe"
    after = stored(env, "neuron_concepts")
    assert after["concept"].to_list() == before["concept"].to_list()
    np.testing.assert_allclose(after["score"].to_numpy(), before["score"].to_numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("asset, cfg, message", [
    (robustness.zero_shot_robustness, {"eps": [0.0]}, "eps must be distinct radii"),
    (robustness.zero_shot_robustness, {"attacks": ["fgsm"]}, "attacks must be a non-empty list"),
    (robustness.zero_shot_robustness, {"n_iter": 0}, "n_iter\n  Input should be greater than or equal to 1"),
    (roar_assets.roar, {"fractions": [0.5]}, "fractions must be at least two"),
    (roar_assets.roar, {"fractions": [0.5, 0.2]}, "fractions must be at least two"),
    (roar_assets.roar, {"methods": ["lime"]}, "saliency methods must be"),
    (roar_assets.roar, {"train_images": 0}, "train_images must be >= 1"),
    (dissect.neuron_concepts, {"layer": 4}, "layer 4 is outside 'toy-vit.s0''s 4 blocks"),
    (dissect.neuron_concepts, {"probe": "no-such-model"}, "unknown model 'no-such-model'"),
    (dissect.neuron_concepts, {"top_k": 0}, "top_k\n  Input should be greater than or equal to 1"),
])
def test_bad_configs_fail_before_anything_is_written(env, robust_run, roar_run, dissect_run, asset, cfg, message):
    assert_fails_untouched(env, asset, cfg, message)


def test_a_resnet_cannot_be_dissected(env, dissect_run, monkeypatch):
    load = ModelZoo.load
    monkeypatch.setattr(ModelZoo, "load", lambda self, key: dataclasses.replace(load(self, key), family="resnet"))
    assert_fails_untouched(env, dissect.neuron_concepts, {}, "'toy-vit.s0' is a resnet model")


def assert_fails_untouched(env, asset, cfg, message):
    from pipelines.cli import root_cause

    root, _, res = env
    name = asset.key.path[-1]
    path = root / name / f"model={MODEL}" / f"dataset={DATASET}" / "part-0.parquet"
    before = path.read_bytes()
    version = res["lance"].table(name).version if name == "neuron_concepts" else None
    result = run(env, asset, cfg, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert message in root_cause(failure.step_failure_data.error)
    assert path.read_bytes() == before
    assert version is None or res["lance"].table(name).version == version

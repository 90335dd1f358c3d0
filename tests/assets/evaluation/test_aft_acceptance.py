"""Issue acceptance on toyworld (slow): the trained toy CLIP against its two short AFT fine-tunes (ε = 1/255, 4/255).

The built-in `toy-vit.s0.aft-e{1,4}-short` (40 steps × 128 at lr 1e-4, the paper's other defaults) are trained
from the default toy CLIP of `trained_root`, then every model gets the same evaluation: Simple-Gradient energy
pointing game on the object masks, Grad-CAM SSIM under noise at s = 4/255, clean top-1, robust top-1 (APGD-CE +
APGD-T, 100 iterations) at ε = 1/255. Each number is printed; the assertions are what toyworld shows (README):
measured 0.5816 / 0.5836 / 0.5940 (SG energy PG, base / ε1 / ε4), 0.9555 / 0.9624 / 0.9690 (SSIM), 0.828 / 0.828 /
0.844 (robust top-1), 0.9083 / 0.9117 / 0.9075 (clean top-1).
"""

import polars as pl
import pytest
from dagster import materialize

from assets import data, encodings
from assets.evaluation import explanations, localisation, robustness, saliency
from assets.partitions import partition_key
from pipelines.definitions import resources_from_env
from pipelines.runs import materialise
from resources.models import read_sidecar

BASE = "toy-vit.s0"
AFT = {1: "toy-vit.s0.aft-e1-short", 4: "toy-vit.s0.aft-e4-short"}
CONFIG = {
    "saliency_maps": {"methods": ["simple_gradient", "grad_cam"], "images": 600},
    "explanation_robustness": {"methods": ["grad_cam"], "sigmas": [4.0], "images": 200},
    "zero_shot_robustness": {"eps": [1.0], "images": 64},
}
ASSETS = [data.dataset_manifest, data.class_text_embeddings, encodings.image_encodings, saliency.saliency_maps,
          localisation.localisation_eval, explanations.explanation_robustness, robustness.zero_shot_robustness]


def _evaluate(root, instance, model) -> dict:
    res = resources_from_env(str(root))
    result = materialize(ASSETS, instance=instance, partition_key=partition_key(model, "toyworld"), resources=res,
                         run_config={"ops": {k: {"config": v} for k, v in CONFIG.items()}})
    assert result.success
    store = res["store"]

    def read(asset):
        return store.read(asset, model=model, dataset="toyworld").collect()

    loc = read("localisation_eval").filter(pl.col("method") == "simple_gradient").row(0, named=True)
    robust = read("zero_shot_robustness")
    return {
        "clean top-1": read("zero_shot_predictions")["correct"].mean(),
        "SG energy PG": loc["energy_pointing_game"],
        "SG pointing game": loc["pointing_game"],
        "Grad-CAM SSIM @4/255": read("explanation_robustness")["ssim_mean"][0],
        "robust top-1 @1/255": robust.filter(pl.col("attack") == "apgd-ce+apgd-t")["accuracy"][0],
        "clean top-1 (APGD subset)": robust.filter(pl.col("attack") == "clean")["accuracy"][0],
    }


@pytest.mark.slow
def test_aft_against_the_base_toy_clip(trained_root):
    root, instance, _, _ = trained_root
    res = resources_from_env(str(root))
    for key in AFT.values():
        outcome = materialise(instance, key, "toyworld", res, analyses=False)
        assert outcome.success
    numbers = {m: _evaluate(root, instance, m) for m in (BASE, *AFT.values())}
    print("\n" + " | ".join(["metric", *numbers]))
    for metric in numbers[BASE]:
        print(" | ".join([metric, *(f"{numbers[m][metric]:.4f}" for m in numbers)]))
    base, e1, e4 = numbers[BASE], numbers[AFT[1]], numbers[AFT[4]]
    for aft in (e1, e4):  # more of the Simple-Gradient map on the object, Grad-CAM steadier under noise
        assert aft["SG energy PG"] > base["SG energy PG"], (aft, base)
        assert aft["Grad-CAM SSIM @4/255"] > base["Grad-CAM SSIM @4/255"], (aft, base)
    assert base["clean top-1"] - e1["clean top-1"] <= 0.05  # ≤ 5 points lost at ε = 1/255
    # Robustness of the embedding itself, on 256 val images under a fresh PGD at the training ε (the checkpoint's
    # metrics): measured −22 % to −24 % (ε = 4/255) and −3 % to −5 % (ε = 1/255).
    for eps, key in AFT.items():
        m = read_sidecar(res["zoo"].checkpoint_dir(key))["cliplab"]["metrics"]
        assert m["attack distance after"] < (0.9 if eps == 4 else 1.0) * m["attack distance before"], (key, m)
    # Robust top-1 at 1/255 on 64 images moves by single images with the CPU the toy CLIP was trained on (0.828 →
    # 0.844 on one machine, 0.766 → 0.750 on another, same seeds): at this radius most of the base's correct images
    # already survive. The fine-tunes must not lose more than 2 of 64.
    for aft in (e1, e4):
        assert aft["robust top-1 @1/255"] >= base["robust top-1 @1/255"] - 2 / 64, (aft, base)

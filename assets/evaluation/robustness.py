"""zero_shot_robustness: clean and robust zero-shot top-1 under APGD-CE and APGD-T (AutoAttack's protocol, as FARE).

On a seeded subset of the dataset's evaluation images, for each L∞ radius ε (in 1/255 of [0, 1] pixels: the attack
runs on pixels, Normalize inside the model), the attacks run in sequence, each on the points no earlier one has fooled
(`cliplab.evaluation.apgd.robust_accuracy`): a point is robust only if it is correct on clean pixels and every attack
fails on it. The classifier is CLIP's zero-shot head, logits = 100 · cos(f(x), W) over the class prompts
(`PixelModel.logits`, in float32 even on CUDA). Each ε restarts the random starts' generator from `seed` (AutoAttack reseeds every run), so the
numbers of one ε do not depend on which other radii were asked for. APGD-T's DLR loss reads the 4th-highest logit: a
dataset with fewer than 4 classes runs APGD-CE only, and the metadata says so. Throughput (images/s) counts an image
once for all its radii and attacks.
"""

import functools
from typing import Optional

import pyarrow as pa
import torch
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets._report import Progress, png_metadata, table_metadata
from assets.data import partition_view
from assets.evaluation._common import dataset_default, pixel_model, positive, subset
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab import plots
from cliplab.errors import CliplabError
from cliplab.evaluation.apgd import ATTACKS, N_ITER, N_TARGET_CLASSES, robust_accuracy
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo
from resources.store import ArtifactStore

CLEAN = "clean"
DLR_MIN_CLASSES = 4  # the targeted DLR loss's denominator reads the 4th-highest logit
SCHEMA = pa.schema([("eps_255", pa.float64()), ("attack", pa.string()), ("accuracy", pa.float64()),
                    ("n_images", pa.int64()), ("n_iter", pa.int64())],
                   metadata={"attack": "'clean', then the attacks so far joined by '+': robust to all of them",
                             "accuracy": "top-1 ↑", "n_iter": "iterations per APGD run (0: no attack)"})


class RobustnessConfig(Config):
    eps: list[float] = [1.0, 2.0, 4.0]  # L∞ radii in units of 1/255 of [0, 1] pixels
    attacks: list[str] = list(ATTACKS)  # in this order, each on the survivors of the previous
    n_iter: int = Field(default=N_ITER, ge=1)  # per APGD run (torchattacks defaults to 10; the protocol's is 100)
    n_target_classes: int = Field(default=N_TARGET_CLASSES, ge=1)  # APGD-T targets: the 2nd … (n + 1)-th clean logit
    images: Optional[int] = None  # seeded subset; None = the dataset's `robust_images` (registry), else 1000
    batch_size: int = Field(default=64, ge=1)  # images attacked at once (memory)
    seed: int = Field(default=0, ge=0)  # the subset and every attack's random starts


@asset(code_version="1", partitions_def=model_dataset, group_name="evaluation", kinds={"parquet"}, pool="gpu",
       deps=[AssetKey("class_text_embeddings"), AssetKey("dataset_manifest"), MODEL_CHECKPOINT])
def zero_shot_robustness(context: AssetExecutionContext, config: RobustnessConfig, datasets: DatasetCatalog,
                         zoo: ModelZoo, store: ArtifactStore) -> MaterializeResult:
    """Clean top-1 and robust top-1 ↑ after each attack of APGD-CE → APGD-T, at every ε, on a seeded subset."""
    model, dataset = model_and_dataset(context)
    eps = check_config(config)
    n = positive("images", config.images) or dataset_default(datasets, dataset, "robust_images", 1000)
    pm = pixel_model(zoo, store, model, dataset)
    n_classes = pm.weights.shape[0]
    attacks, skipped = runnable_attacks(list(config.attacks), n_classes)
    skip_note = f"apgd-t: {dataset} has {n_classes} classes, DLR needs {DLR_MIN_CLASSES}" if skipped else "none"
    if skipped:
        context.log.warning(f"skipping {skip_note}; running {attacks} only")
    view = subset(partition_view(datasets, store, model, dataset), n, config.seed)
    if view.manifest.is_empty():
        raise CliplabError(f"dataset {dataset!r} has no usable images to attack")
    generators = {e: torch.Generator().manual_seed(config.seed) for e in eps}
    attack_logits = functools.partial(pm.logits, autocast=False)  # float32 gradients, also on CUDA
    correct = {(e, stage): 0 for e in eps for stage in stages(attacks)}
    progress = Progress(context, len(view.manifest), f"APGD {model} × {dataset}")
    for rows, pixels in datasets.image_batches(view, pm.to_pixels, config.batch_size):
        pixels, labels = pixels.to(pm.device), torch.from_numpy(rows["label"].to_numpy(writable=True)).to(pm.device)
        for e in eps:
            result = robust_accuracy(attack_logits, pixels, labels, e / 255, attacks, generators[e], config.n_iter,
                                     n_target_classes=config.n_target_classes)
            correct[(e, CLEAN)] += int(result.clean.sum())
            for stage, attack in zip(stages(attacks)[1:], attacks):
                correct[(e, stage)] += round(result.after_each[attack] * len(rows))  # a fraction of the batch
        progress.update(len(rows))
    progress.close()
    total, rate, seconds = progress.done, progress.rate, progress.seconds
    table = pa.table({
        "eps_255": [e for e, _ in correct], "attack": [s for _, s in correct],
        "accuracy": [c / total for c in correct.values()], "n_images": [total] * len(correct),
        "n_iter": [0 if s == CLEAN else config.n_iter for _, s in correct]}, schema=SCHEMA)
    path = store.write("zero_shot_robustness", table, model=model, dataset=dataset)
    accuracy = {stage: [correct[(e, stage)] / total for e in eps] for stage in stages(attacks)}
    figure = plots.metric_curves({s: (eps, a) for s, a in accuracy.items()}, "ε (1/255, L∞ in pixels)",
                                 "top-1 accuracy ↑", f"{model} × {dataset}: zero-shot accuracy under attack",
                                 ylim=(-0.02, 1.02))
    return MaterializeResult(metadata={
        "dagster/row_count": table.num_rows, "images": total, "classes": n_classes,
        "accuracy": MetadataValue.md(markdown(eps, accuracy)), "eps (1/255)": eps, "attacks": attacks,
        "skipped attacks": MetadataValue.md(skip_note), "n_iter": config.n_iter,
        "targets per point": min(config.n_target_classes, n_classes - 1) if "apgd-t" in attacks else 0,
        "batch_size": config.batch_size, "seed": config.seed, "device": pm.device,
        "images/s": round(rate, 3), "seconds": round(seconds, 1), **table_metadata(path),
        **png_metadata(figure, store.figure_path("zero_shot_robustness", f"{model}__{dataset}.png"), "accuracy vs eps"),
    })


def check_config(config: RobustnessConfig) -> list[float]:
    """The radii, ascending; eps and attacks checked (a CliplabError names the bad one; the sizes are ranged in the schema)."""
    eps = list(config.eps)
    if not eps or any(not 0 < e <= 255 for e in eps) or len(set(eps)) != len(eps):
        raise CliplabError(f"eps must be distinct radii in (0, 255] (units of 1/255), got {eps}")
    attacks = list(config.attacks)
    if not attacks or any(a not in ATTACKS for a in attacks) or len(set(attacks)) != len(attacks):
        raise CliplabError(f"attacks must be a non-empty list of distinct attacks from {ATTACKS}, got {attacks}")
    return sorted(eps)


def runnable_attacks(attacks: list[str], n_classes: int) -> tuple[list[str], list[str]]:
    """(attacks to run, attacks skipped): APGD-T is skipped below 4 classes; nothing left to run is an error."""
    skipped = [a for a in attacks if a == "apgd-t" and n_classes < DLR_MIN_CLASSES]
    kept = [a for a in attacks if a not in skipped]
    if not kept:
        raise CliplabError(f"APGD-T needs at least {DLR_MIN_CLASSES} classes, the dataset has {n_classes}: "
                           "add 'apgd-ce' to attacks")
    return kept, skipped


def stages(attacks: list[str]) -> list[str]:
    """Row labels: 'clean', then each prefix of the sequence ('apgd-ce', 'apgd-ce+apgd-t')."""
    return [CLEAN] + ["+".join(attacks[: i + 1]) for i in range(len(attacks))]


def markdown(eps: list[float], accuracy: dict[str, list[float]]) -> str:
    lines = ["| top-1 ↑ | " + " | ".join(f"ε = {e:g}/255" for e in eps) + " |", "|" + "---|" * (len(eps) + 1)]
    lines += [f"| {stage} | " + " | ".join(f"{a:.4f}" for a in accs) + " |" for stage, accs in accuracy.items()]
    return "\n".join(lines)

"""visual_concept_descriptors → concept_eval, descriptor_zero_shot: the paper's Tables 1, 2 and A.2."""

import contextlib
import dataclasses

import numpy as np
import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets._report import Progress, png_metadata, table_metadata
from assets.data import partition_view, read_class_weights
from assets.mutual.concepts import patch_grid
from assets.mutual.knowledge import (
    BRANCHES,
    concept_grids,
    read_descriptor_bank,
    read_predictions,
)
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab import plots
from cliplab.errors import CliplabError
from cliplab.mutual.concept_eval import (
    SCALE,
    blur,
    concept_ranking,
    deletion_insertion_images,
    step_masks,
    summarise,
)
from cliplab.mutual.descriptor_zero_shot import (
    ZERO_SHOT_PROMPT,
    augment_descriptors,
    descriptor_classifier,
)
from cliplab.mutual.transport import assignment_entropy
from cliplab.zeroshot import class_embeddings
from resources.datasets import DatasetCatalog
from resources.lance import LanceStore
from resources.models import ModelZoo
from resources.store import ArtifactStore

DV = AssetKey("visual_concept_descriptors")


class ConceptEvalConfig(Config):
    blur_kernel: int = Field(default=11, ge=1)  # removal = Gaussian blur of the concept's patches (not zeros)
    blur_sigma: float = Field(default=5.0, gt=0)
    seed: int = Field(default=0, ge=0)  # the random-order control
    images_per_class: int = Field(default=40, ge=0)  # ≈ 27 encoder passes per image; the first n of each class (0 = every image)
    batch_size: int = Field(default=16, ge=1)
    encode_batch: int = Field(default=512, ge=1)


@asset(code_version="1", partitions_def=model_dataset, deps=[DV, AssetKey("class_text_embeddings"), MODEL_CHECKPOINT], group_name="mutual_knowledge",
       kinds={"parquet"}, pool="gpu")
def concept_eval(context: AssetExecutionContext, config: ConceptEvalConfig, datasets: DatasetCatalog, zoo: ModelZoo,
                 store: ArtifactStore) -> MaterializeResult:
    """Deletion, Insertion, AccDrop, AccInc of the multimodal concepts (importance vs random order), and the OT entropy ablation."""
    import torch
    import torch.nn.functional as F

    model, dataset = model_and_dataset(context)
    grid = patch_grid(store, model, dataset)
    grids = concept_grids(store, model, dataset, grid[0] * grid[1])
    dv = store.read("visual_concept_descriptors", model=model, dataset=dataset).select(
        "image_id", "branch", "concept", "embedding", "importance", "descriptor_index", "descriptor_index_no_ot").collect()
    by_image = {key: g.sort("concept") for key, g in dv.group_by(["image_id", "branch"])}
    preds = dict(read_predictions(store, model, dataset).select("image_id", "pred").iter_rows())
    view = partition_view(datasets, store, model, dataset)
    if config.images_per_class:
        view = dataclasses.replace(view, manifest=view.manifest.filter(
            pl.int_range(pl.len()).over("label") < config.images_per_class))
    m = zoo.load(model)
    W = read_class_weights(store, model, dataset).to(m.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if m.device.startswith("cuda") else contextlib.nullcontext()
    mean = torch.tensor(m.mean, device=m.device)[None, :, None, None]
    std = torch.tensor(m.std, device=m.device)[None, :, None, None]
    results = {(b, o, k): ([], []) for b in BRANCHES for o in ("importance", "random") for k in ("deletion", "insertion")}
    progress = Progress(context, len(view.manifest), f"concept deletion/insertion {model} × {dataset}")
    for index, (rows, images) in enumerate(datasets.image_batches(view, m.preprocess, config.batch_size)):
        images = images.to(m.device, torch.float32)
        H, W_px = images.shape[-2:]
        pixels = (images * std + mean).clamp(0, 1)
        blurred = blur(pixels, config.blur_kernel, config.blur_sigma)
        with torch.inference_mode(), autocast:
            image_emb = F.normalize(m.model.encode_image(images).float(), dim=-1)
        variants, keys = [], []
        for b, (image_id, label) in enumerate(rows.select("image_id", "label").iter_rows()):
            rng = np.random.default_rng([config.seed, index, b])
            for branch in BRANCHES:
                g = by_image.get((image_id, branch))
                if g is None:
                    continue
                concept_ids = g["concept"].to_numpy()
                emb = torch.from_numpy(np.stack(g["embedding"].to_numpy())).to(m.device)
                concept_sim = (F.normalize(emb, dim=-1) @ image_emb[b]).cpu().numpy()
                ids = torch.from_numpy(grids[branch][image_id]).to(m.device).view(1, 1, *grid)
                regions = torch.cat([F.interpolate((ids == c).float(), size=(H, W_px), mode="nearest") for c in concept_ids])[:, 0] > 0.5
                orders = {"importance": concept_ranking(concept_sim, g["importance"].to_list()),
                          "random": rng.permutation(len(concept_ids))}
                for name, order in orders.items():
                    variants.append(deletion_insertion_images(pixels[b], blurred[b], step_masks(regions, order)))
                    keys.append((branch, name, int(label), preds[image_id]))
        if variants:
            steps = [v.shape[1] for v in variants]
            flat = torch.cat([v.flatten(0, 1) for v in variants])
            with torch.inference_mode(), autocast:
                emb = torch.cat([F.normalize(m.model.encode_image((x - mean) / std).float(), dim=-1)
                                 for x in flat.split(config.encode_batch)])
            logits = emb @ W.T
            hit = (logits.argmax(dim=1).cpu().numpy())
            score = logits.cpu().numpy()
            offset = 0
            for (branch, order, label, pred), t in zip(keys, steps):
                for kind in ("deletion", "insertion"):
                    part = slice(offset, offset + t)
                    results[(branch, order, kind)][0].append(SCALE * score[part, pred])
                    results[(branch, order, kind)][1].append(hit[part] == label)
                    offset += t
        progress.update(len(rows))
    progress.close()
    if not any(v[0] for v in results.values()):
        raise CliplabError(f"no image of {model} × {dataset} has a visual concept to evaluate")
    table, meta = [], {"images": progress.done, "images per class": config.images_per_class or "all", "blur": f"{config.blur_kernel}x{config.blur_kernel}, sigma {config.blur_sigma}",
                       "images/s": round(progress.rate, 1)}
    curves = {}
    for branch in BRANCHES:
        entropy = {ot: [assignment_entropy(g[col].to_list()) for _, g in dv.filter(pl.col("branch") == branch).group_by("image_id")]
                   for ot, col in ((True, "descriptor_index"), (False, "descriptor_index_no_ot"))}
        for order in ("importance", "random"):
            d = summarise(*results[(branch, order, "deletion")], "deletion")
            i = summarise(*results[(branch, order, "insertion")], "insertion")
            curves[(branch, order)] = (d["curve"], i["curve"])
            table.append({"branch": branch, "order": order, "deletion_auc": d["auc"], "insertion_auc": i["auc"],
                          "acc_drop": d["acc_drop"], "acc_inc": i["acc_inc"],
                          "deletion_curve": d["curve"].tolist(), "insertion_curve": i["curve"].tolist(),
                          "deletion_accuracy": d["accuracy_curve"].tolist(), "insertion_accuracy": i["accuracy_curve"].tolist(),
                          "entropy_ot": float(np.mean(entropy[True])), "entropy_no_ot": float(np.mean(entropy[False])),
                          "images": len(results[(branch, order, "deletion")][0])})
            for key in ("deletion_auc", "insertion_auc", "acc_drop", "acc_inc"):
                meta[f"{key} ({branch}, {order})"] = table[-1][key]
        meta[f"assignment entropy OT / no OT ({branch})"] = f"{np.mean(entropy[True]):.3f} / {np.mean(entropy[False]):.3f}"
    df = pl.DataFrame(table)
    path = store.write("concept_eval", df, model=model, dataset=dataset)
    meta |= {"dagster/row_count": len(df), **table_metadata(path),
             "table": MetadataValue.md(plots.markdown_table(df.drop("deletion_curve", "insertion_curve",
                                                                     "deletion_accuracy", "insertion_accuracy")))}
    meta |= png_metadata(plots.deletion_insertion(curves, f"concept deletion / insertion: {model} × {dataset}"),
                         store.figure_path("concept_eval", model, dataset, "deletion_insertion.png"), "deletion / insertion curves")
    return MaterializeResult(metadata=meta)


class DescriptorZeroShotConfig(Config):
    branch: str = "pca"  # which concepts' D_v supply the extra descriptors
    neighbours: int = Field(default=2, ge=1)  # nearest classes in text space the concepts must beat
    extra: int = Field(default=3, ge=0)  # textual concepts added per class
    template: str = ZERO_SHOT_PROMPT


@asset(code_version="1", partitions_def=model_dataset, deps=[DV, AssetKey("descriptor_embeddings"), AssetKey("class_text_embeddings"), MODEL_CHECKPOINT],
       group_name="mutual_knowledge", kinds={"parquet"})
def descriptor_zero_shot(context: AssetExecutionContext, config: DescriptorZeroShotConfig, datasets: DatasetCatalog,
                         zoo: ModelZoo, store: ArtifactStore, lance: LanceStore) -> MaterializeResult:
    """Table 2: the descriptor classifier vs the same with each class's mined textual concepts added (held-out half)."""
    import torch

    if config.branch not in BRANCHES:
        raise CliplabError(f"branch must be one of {BRANCHES}, not {config.branch!r}")
    model, dataset = model_and_dataset(context)
    view = partition_view(datasets, store, model, dataset)
    bank = read_descriptor_bank(lance, model, dataset)
    names = bank["descriptor"].to_list()
    own = [[] for _ in view.class_names]
    for d, classes in enumerate(bank["classes"].to_list()):
        for c in classes:
            own[c].append(d)
    features = store.read("patch_features", model=model, dataset=dataset).select("image_id", "label", "embedding").collect()
    # mine on even positions within each class, evaluate on odd ones: no image explains itself
    features = features.with_columns((pl.int_range(pl.len()).over("label") % 2 == 0).alias("mine"))
    dv = store.read("visual_concept_descriptors", model=model, dataset=dataset).filter(pl.col("branch") == config.branch)
    mined = dv.join(features.lazy().filter("mine").select("image_id"), on="image_id").select("label", "descriptor_index").collect()
    per_class = [[d for ds in mined.filter(pl.col("label") == c)["descriptor_index"].to_list() for d in ds]
                 for c in range(len(view.class_names))]
    W = read_class_weights(store, model, dataset).numpy()
    extra = augment_descriptors(per_class, own, W, config.neighbours, config.extra)
    m = zoo.load(model)
    encode = lambda t: m.model.encode_text(t.to(m.device))
    with torch.inference_mode():
        def prompts(lists):
            texts = [config.template.format(view.class_names[c], names[d]) for c, ds in enumerate(lists) for d in ds]
            owner = np.array([c for c, ds in enumerate(lists) for _ in ds])
            return class_embeddings(encode, m.tokenizer, texts, ["{}"]).cpu().numpy(), owner
        plain_emb, plain_owner = prompts(own)
        aug_emb, aug_owner = prompts([o + e for o, e in zip(own, extra)])
    test = features.filter(~pl.col("mine"))
    x = np.stack(test["embedding"].to_numpy()).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = test["label"].to_numpy()
    plain = float((descriptor_classifier(x, plain_emb, plain_owner, len(own)) == y).mean())
    augmented = float((descriptor_classifier(x, aug_emb, aug_owner, len(own)) == y).mean())
    added = pl.DataFrame({"class_index": np.repeat(np.arange(len(extra)), [len(e) for e in extra]),
                          "descriptor_index": [d for e in extra for d in e],
                          "descriptor": [names[d] for e in extra for d in e]},
                         schema={"class_index": pl.Int64, "descriptor_index": pl.Int64, "descriptor": pl.String})
    store.write("descriptor_zero_shot_added", added, model=model, dataset=dataset)
    result = pl.DataFrame([{"branch": config.branch, "plain_top1": plain, "augmented_top1": augmented,
                            "gain": augmented - plain, "test_images": len(test), "added_descriptors": len(added)}])
    path = store.write("descriptor_zero_shot", result, model=model, dataset=dataset)
    context.log.info(f"descriptor zero-shot {model} × {dataset}: plain top-1 {plain:.4f}, with mined concepts {augmented:.4f}")
    return MaterializeResult(metadata={"plain top-1": plain, "augmented top-1": augmented, "gain": augmented - plain,
                                       "test images": len(test), "added descriptors": len(added), "prompt": config.template,
                                       **table_metadata(path),
                                       "added (first 20)": MetadataValue.json(added.head(20).to_dicts())})

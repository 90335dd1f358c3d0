"""concept_clusters → visual_concept_descriptors → mi_curves → mi_summary → model_comparison.

Mutual knowledge steps 6–11: every visual concept of an image is prompted (red ellipse, reverse
grayscale, reverse blur), described by descriptors of the bank through optimal transport (D_v), and
compared with the language side D_ŷ (class_descriptors) by mutual information while D_v's
descriptors are removed one by one. Both concept branches (PCA, k-means) run side by side.
"""

import contextlib

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from assets import checks
from assets._arrow import vectors
from assets._report import Progress, png_metadata, table_metadata
from assets.data import partition_view
from assets.mutual.concepts import patch_grid
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab import plots
from cliplab.errors import CliplabError
from cliplab.mutual.concept_descriptors import describe_concepts
from cliplab.mutual.information import (
    CONVENTIONS,
    auc,
    average_curves,
    importance_order,
    mi_curve,
)
from cliplab.mutual.transport import assignment_entropy
from cliplab.mutual.visual_prompts import PROMPTS
from resources.datasets import DatasetCatalog
from resources.lance import LanceStore
from resources.models import ModelZoo
from resources.store import ArtifactStore

BRANCHES = ("pca", "kmeans")


def read_descriptor_bank(lance: LanceStore, model: str, dataset: str, column: str = "vector") -> pl.DataFrame:
    """descriptor_index, descriptor, classes and the chosen embedding column of one partition, in bank order."""
    bank = (lance.table("descriptor_embeddings", model=model).to_polars()
            .filter((pl.col("model") == model) & (pl.col("dataset") == dataset))
            .select("descriptor_index", "descriptor", "classes", column).sort("descriptor_index").collect())
    if bank.is_empty():
        raise CliplabError(f"descriptor_embeddings has no rows for model={model}, dataset={dataset}: materialise it first")
    return bank


def read_predictions(store: ArtifactStore, model: str, dataset: str) -> pl.DataFrame:
    """image_id, label, pred (zero-shot top-1 class index), correct."""
    return (store.read("zero_shot_predictions", model=model, dataset=dataset)
            .select("image_id", "label", pl.col("top5_index").list.first().alias("pred"), "correct").collect())


def stored_embeddings(store: ArtifactStore, model: str, dataset: str) -> dict[str, np.ndarray]:
    """image_id → (d,) float32 unit image embedding, as patch_features stored it (the unprompted encoder pass)."""
    df = store.read("patch_features", model=model, dataset=dataset).select("image_id", "embedding").collect()
    return dict(zip(df["image_id"].to_list(), np.stack(df["embedding"].to_numpy()).astype(np.float32)))


def concept_grids(store: ArtifactStore, model: str, dataset: str, n_patches: int) -> dict[str, dict[str, np.ndarray]]:
    """branch → image_id → (N,) concept id per patch (−1 off the prominent patches), from concept_clusters."""
    df = (store.read("concept_clusters", model=model, dataset=dataset)
          .group_by("image_id", maintain_order=True)
          .agg("patch", "pca_concept", "kmeans_concept").collect())
    grids = {b: {} for b in BRANCHES}
    for image_id, patch, pca, km in df.iter_rows():
        for branch, ids in (("pca", pca), ("kmeans", km)):
            g = np.full(n_patches, -1, dtype=np.int64)
            g[np.asarray(patch)] = ids
            grids[branch][image_id] = g
    return grids


class VisualConceptConfig(Config):
    k: int = Field(default=3, ge=1)  # descriptors per concept
    top: int = Field(default=0, ge=0)  # candidates: in every concept's top-`top`; 0 = the dataset's `dv_top` (registry), else 500
    offset: float = Field(default=0.02, ge=0)
    threshold: str = "mean"  # "mean" − offset [reference] or "percentile": median + offset [paper text]
    temperature: float = Field(default=2.5, gt=0)
    n_iter: int = Field(default=1000, ge=1)  # Sinkhorn iterations (the reference's 1000 normalisations)
    max_descriptors: int = Field(default=15, ge=1)  # |D_v| ≤ 15
    blur_kernel: int = Field(default=11, ge=1)
    blur_sigma: float = Field(default=2.0, gt=0)
    batch_size: int = Field(default=32, ge=1)  # images per batch; their 3·L·2 prompts are encoded together
    overlays: int = Field(default=4, ge=0)  # images drawn with their concepts and descriptors


def dv_schema(d: int) -> pa.Schema:
    return pa.schema([
        ("image_id", pa.string()), ("label", pa.int64()), ("pred", pa.int64()), ("branch", pa.string()),
        ("concept", pa.int32()), ("n_patches", pa.int32()), ("ellipse", pa.list_(pa.float32(), 5)),
        ("embedding", pa.list_(pa.float32(), d)),
        ("descriptor_index", pa.list_(pa.int64())), ("descriptor", pa.list_(pa.string())),
        ("similarity", pa.list_(pa.float32())), ("importance", pa.list_(pa.float32())),
        ("descriptor_index_no_ot", pa.list_(pa.int64())),
    ], metadata={"prompts": ",".join(PROMPTS),
                 "layout": "one row per image × branch × concept present; ellipse = (cx, cy, a, b, θ) in model-input "
                           "pixels; embedding = mean of the prompts' unit embeddings; descriptor_index: top-k by the "
                           "OT plan (D_v before de-duplication), similarity = concept·descriptor cosine, importance = "
                           "image·descriptor cosine; descriptor_index_no_ot: plain top-k of S (the ablation)"})


@asset(code_version="2", partitions_def=model_dataset, deps=[MODEL_CHECKPOINT, AssetKey("concept_clusters"), AssetKey("descriptor_embeddings"),
                                           AssetKey("zero_shot_predictions"), AssetKey("patch_features")],
       group_name="mutual_knowledge", kinds={"parquet"}, pool="gpu")
def visual_concept_descriptors(context: AssetExecutionContext, config: VisualConceptConfig, datasets: DatasetCatalog,
                               zoo: ModelZoo, store: ArtifactStore, lance: LanceStore) -> MaterializeResult:
    """D_v: per image and concept (both branches) the visual-prompt embedding and its top-k descriptors by OT.

    Encoder work: each image's unprompted embedding is the one patch_features stored (same model, same
    preprocessing, same forward), and concepts with the same ellipse on the same image (`cliplab.mutual.concept_descriptors`)
    are prompted and encoded once; the table is what encoding every image and every concept gives.
    """
    import torch
    import torch.nn.functional as F

    model, dataset = model_and_dataset(context)
    grid = patch_grid(store, model, dataset)
    L = int(pq.read_schema(store.table_path("concept_clusters", model=model, dataset=dataset)).metadata[b"L"])
    grids = concept_grids(store, model, dataset, grid[0] * grid[1])
    bank = read_descriptor_bank(lance, model, dataset)
    preds = dict(zip(*read_predictions(store, model, dataset).select("image_id", "pred").to_dict(as_series=False).values()))
    stored = stored_embeddings(store, model, dataset)
    view = partition_view(datasets, store, model, dataset)
    m = zoo.load(model)
    D_text = torch.from_numpy(bank["vector"].to_numpy().astype(np.float32)).to(m.device)  # (|D|, d)
    names = bank["descriptor"].to_numpy()
    mean = torch.tensor(m.mean, device=m.device)[None, :, None, None]
    std = torch.tensor(m.std, device=m.device)[None, :, None, None]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if m.device.startswith("cuda") else contextlib.nullcontext()

    def encode(x):
        with autocast:
            return m.model.encode_image(x).float()

    top = config.top or int(datasets.spec(dataset).options.get("dv_top", 500))
    sel = {"k": config.k, "top": top, "offset": config.offset, "threshold": config.threshold,
           "temperature": config.temperature, "n_iter": config.n_iter}
    progress = Progress(context, len(view.manifest), f"visual concepts {model} × {dataset}")
    entropy = {(b, ot): [] for b in BRANCHES for ot in (True, False)}
    n_rows, no_region, drawn = 0, 0, []
    passes = {"images": 0, "images from patch_features": 0, "concepts": 0, "concept prompts encoded": 0}
    schema = dv_schema(D_text.shape[1])
    with store.writer("visual_concept_descriptors", schema, model=model, dataset=dataset) as w:
        for rows, images in datasets.image_batches(view, m.preprocess, config.batch_size):
            ids = rows["image_id"].to_list()
            images = images.to(m.device, torch.float32)
            B = images.shape[0]
            with torch.inference_mode():
                if all(i in stored for i in ids):
                    image_emb = torch.from_numpy(np.stack([stored[i] for i in ids])).to(m.device)  # (B, d)
                    passes["images from patch_features"] += B
                else:
                    image_emb = F.normalize(encode(images), dim=-1)  # (B, d)
                    passes["images"] += B
            g = [np.stack([grids[branch].get(i, np.full(grid[0] * grid[1], -1)) for i in ids]) for branch in BRANCHES]
            cd = describe_concepts(encode, images, mean, std, g, grid, L, D_text, image_emb, sel,
                                   config.blur_kernel, config.blur_sigma)
            passes["concepts"] += len(cd.slot)
            passes["concept prompts encoded"] += cd.prompts_encoded
            S, image_sim, n_patch, ell, emb = cd.S, cd.image_sim, cd.n_patches, cd.ellipses, cd.features
            picks = {branch: {ot: cd.picks[(j, ot)] for ot in (True, False)} for j, branch in enumerate(BRANCHES)}
            pair = {(int(b), int(s)): q for q, (b, s) in enumerate(zip(cd.image.tolist(), cd.slot.tolist()))}
            out = {c: [] for c in schema.names}
            for b, image_id in enumerate(ids):
                if not n_patch[b].any():
                    no_region += 1
                for j, branch in enumerate(BRANCHES):
                    for ot in (True, False):
                        chosen = [[d for d in c if d >= 0] for c, p in zip(picks[branch][ot][b], n_patch[b, j * L:(j + 1) * L]) if p]
                        if chosen:
                            entropy[(branch, ot)].append(assignment_entropy(chosen))
                    for c in range(L):
                        q = pair.get((b, j * L + c))
                        if q is None:
                            continue
                        d_ot = [int(d) for d in picks[branch][True][b, c] if d >= 0]
                        out["image_id"].append(image_id)
                        out["label"].append(int(rows["label"][b]))
                        out["pred"].append(int(preds[image_id]))
                        out["branch"].append(branch)
                        out["concept"].append(c)
                        out["n_patches"].append(int(n_patch[b, j * L + c]))
                        out["ellipse"].append(ell[q])
                        out["embedding"].append(emb[q])
                        out["descriptor_index"].append(d_ot)
                        out["descriptor"].append(names[d_ot].tolist())
                        out["similarity"].append(S[b, j * L + c, d_ot].astype(np.float32).tolist())
                        out["importance"].append(image_sim[b, d_ot].astype(np.float32).tolist())
                        out["descriptor_index_no_ot"].append([int(d) for d in picks[branch][False][b, c] if d >= 0])
            n = len(out["image_id"])
            if n:
                out["ellipse"] = vectors(np.stack(out["ellipse"]), 5)
                out["embedding"] = vectors(np.stack(out["embedding"]))
                w.write_table(pa.table(out, schema=schema))
                n_rows += n
            if len(drawn) < config.overlays:
                pixels = (images * std + mean).clamp(0, 1)
                drawn += [(image_id, pixels[b].permute(1, 2, 0).cpu().numpy()) for b, image_id in enumerate(ids)
                          if n_patch[b].any()][: config.overlays - len(drawn)]
            progress.update(len(ids))
    progress.close()
    meta = {"dagster/row_count": n_rows, "images": progress.done, "images with no prominent region": no_region,
            "images/s": round(progress.rate, 1), "L": L, "candidate top": top,
            "encoder passes": MetadataValue.json(passes),
            "encoder passes per image": round((passes["images"] + passes["concept prompts encoded"]) / max(progress.done, 1), 2),
            "options": MetadataValue.json(config.model_dump()),
            "prompts": MetadataValue.json(list(PROMPTS))}
    for (branch, ot), values in entropy.items():
        meta[f"assignment entropy ({branch}, {'OT' if ot else 'no OT'})"] = float(np.mean(values)) if values else 0.0
    table = store.read("visual_concept_descriptors", model=model, dataset=dataset)
    meta |= grounding_metadata(context, table, datasets, dataset, bank, config.max_descriptors)
    if drawn:
        rows = table.filter(pl.col("image_id").is_in([i for i, _ in drawn]) & (pl.col("branch") == "pca")).collect()
        png = plots.concept_overlays([img for _, img in drawn], [rows.filter(pl.col("image_id") == i) for i, _ in drawn],
                                     [grids["pca"][i].reshape(grid) for i, _ in drawn])
        meta |= png_metadata(png, store.figure_path("visual_concept_descriptors", model, dataset, "overlays.png"),
                             "concept overlays (PCA branch)")
    context.log.info(f"visual concepts {model} × {dataset}: {n_rows} concept rows, {progress.rate:.1f} images/s")
    return MaterializeResult(metadata=meta)


def dv_sequences(table: pl.LazyFrame, max_descriptors: int = 15) -> pl.DataFrame:
    """Per image × branch, D_v: the concepts' descriptors in importance order (step 8), with their scores.

    Columns image_id, label, pred, branch, dv (list of descriptor indices), dv_importance. Concepts are
    taken in id order, as the reference iterates them.
    """
    rows = table.sort("image_id", "branch", "concept").collect()
    out = []
    for (image_id, branch), g in rows.group_by(["image_id", "branch"], maintain_order=True):
        selected = g["descriptor_index"].to_list()
        sim = {d: s for ds, ss in zip(selected, g["importance"].to_list()) for d, s in zip(ds, ss)}
        dense = np.zeros(max(sim, default=-1) + 1)
        dense[list(sim)] = list(sim.values())
        dv, scores = importance_order(selected, dense, max_descriptors)
        out.append((image_id, int(g["label"][0]), int(g["pred"][0]), branch, dv, scores.tolist()))
    return pl.DataFrame(out, schema={"image_id": pl.String, "label": pl.Int64, "pred": pl.Int64, "branch": pl.String,
                                     "dv": pl.List(pl.Int64), "dv_importance": pl.List(pl.Float64)}, orient="row")


def grounding_metadata(context, table: pl.LazyFrame, datasets: DatasetCatalog, dataset: str, bank: pl.DataFrame,
                       max_descriptors: int) -> dict:
    """toyworld only: the fraction of D_v descriptors that name a part or attribute present in the image."""
    from cliplab.toy import toyworld as tw
    from cliplab.toy.groundtruth import descriptor_grounding

    truth = datasets.part_maps(dataset)
    if truth is None:
        return {}
    dv = dv_sequences(table, max_descriptors)
    present = {i: {tw.PART_NAMES[p] for p in np.unique(pm) if p > 0} for i, pm in zip(truth[0], truth[1])}
    names = bank["descriptor"].to_list()
    classes = tw.class_names()
    meta = {}
    for branch in BRANCHES:
        rows = dv.filter(pl.col("branch") == branch)
        hit, chance = descriptor_grounding(rows["dv"].to_list(), [classes[k] for k in rows["label"]],
                                           [present[i] for i in rows["image_id"]], names)
        meta[f"D_v grounded fraction ({branch})"] = hit
        meta[f"D_v grounded fraction, random descriptors ({branch})"] = chance
        context.log.info(f"D_v vs toyworld ground truth ({branch}): {hit:.3f} of descriptors name a part present "
                         f"(random descriptors: {chance:.3f})")
    return meta


class MIConfig(Config):
    u: int = Field(default=0, ge=0)  # |D_ŷ|; 0 = the dataset's `mi_u` (registry), else the paper's 50
    target: str = "prediction"  # D_ŷ of the zero-shot prediction [paper] or "ground_truth" [reference notebook]
    convention: str = "reference"  # "reference": ln N + ln M + ln c; "textbook": ln N + ln M − ln c
    auc: str = "mean"  # "mean" [reference] or "trapezoid"
    max_descriptors: int = Field(default=15, ge=1)


MI_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("label", pa.int64()), ("pred", pa.int64()), ("branch", pa.string()),
    ("n_dv", pa.int32()), ("matches", pa.int32()), ("mi", pa.float64()), ("curve", pa.list_(pa.float64())),
    ("auc", pa.float64()),
])


@asset(code_version="1", partitions_def=model_dataset, deps=[visual_concept_descriptors, AssetKey("class_descriptors")],
       group_name="mutual_knowledge", kinds={"parquet"}, check_specs=checks.specs("mi_curves", "mi_curve_sentinel_and_bounds"))
def mi_curves(context: AssetExecutionContext, config: MIConfig, store: ArtifactStore,
              datasets: DatasetCatalog) -> MaterializeResult:
    """Per image and branch: MI(D_v; D_ŷ) after each removal of D_v's most important descriptor, matches c, AUC."""
    if config.target not in ("prediction", "ground_truth"):
        raise CliplabError(f"target must be 'prediction' or 'ground_truth', not {config.target!r}")
    if config.convention not in CONVENTIONS:
        raise CliplabError(f"unknown MI convention {config.convention!r}; choose one of {CONVENTIONS}")
    model, dataset = model_and_dataset(context)
    u = config.u or int(datasets.spec(dataset).options.get("mi_u", 50))
    dv = dv_sequences(store.read("visual_concept_descriptors", model=model, dataset=dataset), config.max_descriptors)
    d_y = (store.read("class_descriptors", model=model, dataset=dataset).filter(pl.col("rank") < u)
           .sort("class_index", "rank").group_by("class_index", maintain_order=True).agg("descriptor_index").collect())
    D_y = dict(zip(d_y["class_index"].to_list(), d_y["descriptor_index"].to_list()))
    d_y_names = store.read("class_descriptors", model=model, dataset=dataset).select("descriptor_index", "descriptor").unique().collect()
    out = {c: [] for c in MI_SCHEMA.names}
    for image_id, label, pred, branch, D_v in dv.select("image_id", "label", "pred", "branch", "dv").iter_rows():
        target = D_y[pred if config.target == "prediction" else label]
        curve = mi_curve(D_v, target, config.convention)
        matches = len(set(D_v) & set(target))
        for c, v in zip(MI_SCHEMA.names, (image_id, label, pred, branch, len(D_v), matches, float(curve[0]),
                                          curve.tolist(), auc(curve, config.auc))):
            out[c].append(v)
    table = pa.table(out, schema=MI_SCHEMA.with_metadata({
        "u": str(u), "target": config.target, "convention": config.convention, "auc": config.auc}))
    path = store.write("mi_curves", table, model=model, dataset=dataset)
    per_class = class_curves(pl.from_arrow(table))
    store.write("mi_class_curves", per_class, model=model, dataset=dataset)
    meta = {"dagster/row_count": len(table), **table_metadata(path), "u": u, "D_ŷ of": config.target,
            "MI convention": config.convention, "AUC": config.auc}
    for branch in BRANCHES:
        curves = [np.array(c) for c in pl.from_arrow(table).filter(pl.col("branch") == branch)["curve"].to_list()]
        if curves:
            avg = average_curves(curves)
            meta[f"MI ({branch})"], meta[f"AUC ({branch})"] = float(avg[0]), auc(avg, config.auc)
    if len(per_class):
        png = plots.mi_curves(per_class, f"MI dynamics per class: {model} × {dataset}")
        meta |= png_metadata(png, store.figure_path("mi_curves", model, dataset, "mi_curves.png"), "MI curves per class")
    best = pl.from_arrow(table).filter(pl.col("branch") == "pca").sort("matches", "image_id", descending=[True, False]).head(1)
    if len(best):
        image_id, label, pred = best.row(0)[:3]
        names = dict(store.read("visual_concept_descriptors", model=model, dataset=dataset).select(
            pl.col("descriptor_index").explode(), pl.col("descriptor").explode()).drop_nulls().unique().collect().iter_rows())
        names |= dict(d_y_names.iter_rows())
        D_v = dv.filter((pl.col("image_id") == image_id) & (pl.col("branch") == "pca"))["dv"][0].to_list()
        target = pred if config.target == "prediction" else label
        png = plots.venn([names[d] for d in D_v], [names[d] for d in D_y[target][:15]],
                         f"{image_id}: vision (D_v) / language (D_ŷ, top {min(15, u)}) concepts")
        meta |= png_metadata(png, store.figure_path("mi_curves", model, dataset, "venn.png"), "vision / language / mutual concepts")
    check = checks.mi_curve_sentinel_and_bounds("mi_curves", out["curve"], out["n_dv"], u)
    return MaterializeResult(metadata=meta, check_results=[check])


def class_curves(curves: pl.DataFrame) -> pl.DataFrame:
    """Per class (of the prediction the curve used) and branch, plus both branches averaged ("mean"): the zero-padded mean curve and its AUC."""
    out = []
    for (label, branch), g in curves.group_by(["pred", "branch"], maintain_order=True):
        out.append((label, branch, average_curves([np.array(c) for c in g["curve"].to_list()]), len(g)))
    for label, g in curves.group_by("pred", maintain_order=True):
        out.append((label[0], "mean", average_curves([np.array(c) for c in g["curve"].to_list()]), len(g)))
    return pl.DataFrame([(int(lab), b, c.tolist(), float(c.mean()), n) for lab, b, c, n in out],
                        schema={"class_index": pl.Int64, "branch": pl.String, "curve": pl.List(pl.Float64),
                                "auc": pl.Float64, "images": pl.Int64}, orient="row").sort("class_index", "branch")


@asset(code_version="1", partitions_def=model_dataset, deps=[mi_curves, AssetKey("zero_shot_predictions"), MODEL_CHECKPOINT],
       group_name="mutual_knowledge", kinds={"parquet"})
def mi_summary(context: AssetExecutionContext, zoo: ModelZoo, store: ArtifactStore) -> MaterializeResult:
    """One row per model × dataset, the paper's Table 3: top-1, MI and AUC for the PCA and k-means branches."""
    model, dataset = model_and_dataset(context)
    curves = store.read("mi_curves", model=model, dataset=dataset)
    options = pq.read_schema(store.table_path("mi_curves", model=model, dataset=dataset)).metadata
    method = options.get(b"auc", b"mean").decode()
    curves = curves.collect()
    row = {"family": zoo.load(model).family,
           "top1": float(read_predictions(store, model, dataset)["correct"].mean())}
    for branch in BRANCHES:
        c = [np.array(x) for x in curves.filter(pl.col("branch") == branch)["curve"].to_list()]
        avg = average_curves(c) if c else np.zeros(1)
        row[f"mi_{branch}"], row[f"auc_{branch}"] = float(avg[0]), auc(avg, method)
        row[f"matches_{branch}"] = float(curves.filter(pl.col("branch") == branch)["matches"].mean() or 0.0)
    row |= {"images": curves["image_id"].n_unique(), **{k.decode(): v.decode() for k, v in options.items()}}
    store.write("mi_summary", pl.DataFrame([row]), model=model, dataset=dataset)
    return MaterializeResult(metadata={k: (MetadataValue.float(v) if isinstance(v, float) else str(v)) for k, v in row.items()})


# The paper's Table 3 (ImageNet val), for side-by-side comparison in model_comparison; top-1 as a fraction, like every
# accuracy in cliplab.
PUBLISHED = [
    {"model": "ViT-B/32 (paper)", "family": "vit", "top1": 0.6166, "mi_pca": 7.40, "mi_kmeans": 7.26, "auc_pca": 3.61, "auc_kmeans": 3.39},
    {"model": "ViT-B/16 (paper)", "family": "vit", "top1": 0.6770, "mi_pca": 7.50, "mi_kmeans": 7.44, "auc_pca": 3.62, "auc_kmeans": 3.53},
    {"model": "ViT-L/14 (paper)", "family": "vit", "top1": 0.7477, "mi_pca": 7.94, "mi_kmeans": 7.89, "auc_pca": 4.47, "auc_kmeans": 4.37},
    {"model": "RN-50 (paper)", "family": "resnet", "top1": 0.5842, "mi_pca": 7.14, "mi_kmeans": 7.20, "auc_pca": 3.23, "auc_kmeans": 3.32},
]


@asset(code_version="1", deps=[mi_summary], group_name="mutual_knowledge", kinds={"parquet"})
def model_comparison(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
    """Every materialised mi_summary side by side, a linear fit of AUC vs top-1 per (dataset, family), and a plot."""
    from cliplab.mutual.information import linear_fit

    summary = store.scan("mi_summary").collect().sort("dataset", "family", "top1")
    fits = []
    for (ds, family), g in summary.group_by(["dataset", "family"], maintain_order=True):
        for branch in BRANCHES:
            if g[f"auc_{branch}"].n_unique() >= 2:
                slope, intercept, r = linear_fit(g[f"auc_{branch}"].to_numpy(), g["top1"].to_numpy())
                fits.append({"dataset": ds, "family": family, "branch": branch, "models": len(g),
                             "slope": slope, "intercept": intercept, "r": r})
    fits = pl.DataFrame(fits, schema={"dataset": pl.String, "family": pl.String, "branch": pl.String, "models": pl.Int64,
                                      "slope": pl.Float64, "intercept": pl.Float64, "r": pl.Float64})
    store.write("model_comparison", summary)
    store.write("model_comparison_fits", fits)
    png = plots.auc_vs_accuracy(summary, fits, pl.DataFrame(PUBLISHED))
    meta = {"dagster/row_count": len(summary), "partitions": len(summary),
            "table": MetadataValue.md(plots.markdown_table(summary.select(
                "model", "dataset", "family", "top1", "mi_pca", "mi_kmeans", "auc_pca", "auc_kmeans"))),
            "fits": MetadataValue.json(fits.to_dicts()),
            "published (ImageNet val)": MetadataValue.json(PUBLISHED)}
    meta |= png_metadata(png, store.figure_path("model_comparison", "auc_vs_accuracy.png"), "AUC vs top-1")
    context.log.info(f"model_comparison: {len(summary)} partitions, {len(fits)} fits")
    return MaterializeResult(metadata=meta)



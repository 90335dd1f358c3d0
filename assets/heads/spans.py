"""head_contributions → head_spans → head_labels → head_scores → head_score_table (Gandelsman et al.; CLIP-InterpreT).

* `head_spans`: per head of the last `layers` decomposed layers, TextSpan's top-k texts (score = std over
  images of C·t at the step the text was picked, rank = pick order) for each text bank; and, as the side
  table `head_span_replacement`, the replacement evaluation: zero-shot top-1 with the earlier layers
  mean-ablated and the spanned heads replaced by their TextSpan reconstruction with k texts.
* `head_labels`: per head and bank a property label of its top-5 texts (offline embedding labeler, or an
  OpenAI-compatible LLM endpoint), which texts match it and their similarities.
* `head_scores`: entanglement (both readings) and association per partition; `head_score_table`: every
  partition side by side with the published values (the paper's Tables 1–2).
"""

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

from assets._report import png_metadata, table_metadata
from assets.data import read_class_weights
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab.errors import CliplabError
from resources.labelers import HeadLabelers
from resources.lance import LanceStore
from resources.models import ModelZoo
from resources.store import ArtifactStore

GENERAL_BANK, WORD_BANK = "image_descriptions_general", "google_3498_english"


class SpanConfig(Config):
    k: int = Field(default=20, ge=1)  # texts per head kept (reference: 20 for the text-span study; labels use the top 5)
    ks: list[int] = [1, 2, 5, 10, 20]  # noqa: RUF012 (a pydantic field) — texts per head in the replacement evaluation (0 = heads at their mean)
    r: str = "numerical"  # rank of span(V_r): "numerical" (each head's numerical rank σᵢ above its noise level, ≤ head_dim + 3, recorded as rank_r), "reference" (80), "head_dim+3", or an integer
    layers: int = Field(default=4, ge=1)  # span the heads of the last `layers` decomposed layers; earlier layers are mean-ablated
    banks: list[str] = []  # noqa: RUF012 (a pydantic field) — text banks; empty = the general bank, the word control and the dataset's own (toyworld's phrases)


def _md(df: pl.DataFrame) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    return ("| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
            + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in df.iter_rows()))


def _stack(column: pl.Series):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.stack(column.to_numpy()), dtype=np.float32))


def _rank(r: str, zoo: ModelZoo, model: str):
    from cliplab.heads.textspan import REFERENCE_RANK

    if r == "reference":
        return REFERENCE_RANK, None
    if r in ("head_dim+3", "numerical"):  # a numerical rank is capped at head_dim + 3, the most a head's output has
        attn = zoo.load(model).model.visual.transformer.resblocks[0].attn
        return r, attn.embed_dim // attn.num_heads
    if r.isdigit() and int(r) > 0:
        return int(r), None
    raise CliplabError(f'config r must be "reference", "numerical", "head_dim+3" or a positive integer; got {r!r}')


def _r_used(rank, head_dim: int | None, spans: pl.DataFrame) -> str:
    """r as used: the fixed value, or for "numerical" the range of the per-head ranks (column rank_r)."""
    if rank == "numerical":
        lo, hi = spans["rank_r"].min(), spans["rank_r"].max()
        return f"numerical ({lo})" if lo == hi else f"numerical ({lo}–{hi})"
    return str(head_dim + 3 if rank == "head_dim+3" else rank)


def _banks(config: SpanConfig, texts: pl.DataFrame) -> list[str]:
    present = texts["bank"].unique().to_list()
    if config.banks:
        missing = [b for b in config.banks if b not in present]
        if missing:
            raise CliplabError(f"text banks {missing} are not in text_bank_embeddings for this partition; it has {sorted(present)}")
        return list(config.banks)
    own = texts.filter(pl.col("family") != "")["bank"].unique().sort().to_list()
    return [b for b in (GENERAL_BANK, WORD_BANK) if b in present] + own


@asset(code_version="3", partitions_def=model_dataset, group_name="head_spans", kinds={"parquet"},
       deps=[AssetKey("head_contributions"), AssetKey("text_bank_embeddings"), AssetKey("class_text_embeddings"),
             MODEL_CHECKPOINT])
def head_spans(context: AssetExecutionContext, config: SpanConfig, store: ArtifactStore, lance: LanceStore,
               zoo: ModelZoo) -> MaterializeResult:
    """Per head × bank the TextSpan top-k texts (rank, score); the replacement accuracy per k in `head_span_replacement`."""
    import torch

    from cliplab.heads.replacement import plot_curve, replacement_curves

    model, dataset = model_and_dataset(context)
    if config.layers < 1 or config.k < 1:
        raise CliplabError(f"config layers and k must be ≥ 1; got layers={config.layers}, k={config.k}")
    terms = store.read("head_terms", model=model, dataset=dataset).collect()
    ids = terms.select("image_id").with_row_index("row")
    mine = (pl.col("model") == model) & (pl.col("dataset") == dataset)
    contributions = lance.table("head_contributions", model=model).to_polars().filter(mine)
    stored = sorted(contributions.select("layer").unique().collect()["layer"].to_list())
    if not stored:
        raise CliplabError(f"head_contributions has no rows for {model} × {dataset}")
    spanned = stored[-config.layers:]
    texts_all = lance.table("text_bank_embeddings", model=model).to_polars().filter(mine).drop("vector").collect()
    banks = _banks(config, texts_all)
    rank, head_dim = _rank(config.r, zoo, model)
    ks = sorted({*config.ks, config.k})

    def layer_heads(layer: int) -> torch.Tensor:
        """(H, n, d) one layer's head contributions, rows in head_terms order."""
        rows = contributions.filter(pl.col("layer") == layer).select("head", "image_id", "vector").collect()
        rows = rows.join(ids, on="image_id").sort("head", "row")
        n_heads = rows["head"].n_unique()
        if len(rows) != n_heads * len(ids):
            raise CliplabError(f"head_contributions layer {layer} does not cover the {len(ids)} images of head_terms")
        return _stack(rows["vector"]).reshape(n_heads, len(ids), -1)

    kept = _stack(terms["ln_pre"]) + torch.from_numpy(np.stack([np.stack(m) for m in terms["mlps"].to_list()]).astype(np.float32)).sum(1)
    earlier = torch.zeros_like(kept)
    if terms["rest"].list.len().max() > 0:
        earlier += torch.from_numpy(np.stack([np.stack(r).sum(0) for r in terms["rest"].to_list()]).astype(np.float32))
    for layer in stored[:-config.layers] if len(stored) > config.layers else []:
        earlier += layer_heads(layer).sum(0)
    manifest = store.read("dataset_manifest", model=model, dataset=dataset).select("image_id", "label").collect()
    labels = torch.from_numpy(ids.join(manifest, on="image_id").sort("row")["label"].to_numpy().astype(np.int64))
    weights = read_class_weights(store, model, dataset)
    n_heads = None

    bank_rows = {bank: lance.table("text_bank_embeddings", model=model).to_polars().filter(mine & (pl.col("bank") == bank))
                 .select("text_index", "text", "family", "vector").sort("text_index").collect() for bank in banks}
    # one pass over the spanned layers (each loaded once), every bank TextSpan'd on it
    results = replacement_curves(kept, earlier, (layer_heads(layer) for layer in spanned),
                                 {bank: _stack(rows["vector"]) for bank, rows in bank_rows.items()},
                                 weights, labels, ks=ks, r=rank, head_dim=head_dim)
    picks, curves = [], []
    for bank, curve in results.items():
        n_heads = curve.indices.shape[0] // len(spanned)
        # greedy picks do not depend on how many follow: the first config.k picks of the largest-k run
        order = curve.indices[:, :config.k].numpy()
        head_layer = np.repeat(spanned, n_heads)
        head_index = np.tile(np.arange(n_heads), len(spanned))
        for h in range(order.shape[0]):
            chosen = bank_rows[bank][order[h].tolist()]
            picks.append(pl.DataFrame({
                "bank": bank, "layer": int(head_layer[h]), "head": int(head_index[h]), "rank": np.arange(config.k, dtype=np.int32),
                "text_index": chosen["text_index"], "text": chosen["text"], "family": chosen["family"],
                "score": curve.scores[h, :config.k].numpy().astype(np.float64),
                "rank_r": int(curve.ranks[h]),  # dim of span(V_r) this head's TextSpan used
            }, schema_overrides={"layer": pl.Int32, "head": pl.Int32, "rank_r": pl.Int32}))
        curves.append(pl.DataFrame({"bank": bank, "k": list(curve.ks), "top1": list(curve.top1),
                                    "baseline_top1": curve.baseline_top1, "ablated_top1": curve.ablated_top1,
                                    "n_images": len(ids)}, schema_overrides={"k": pl.Int32}))
        context.log.info(f"{bank}: top-1 {dict(zip(curve.ks, curve.top1))}, baseline {curve.baseline_top1:.3f}")
    spans, replacement = pl.concat(picks), pl.concat(curves)
    path = store.write("head_spans", spans, model=model, dataset=dataset)
    store.write("head_span_replacement", replacement, model=model, dataset=dataset)

    meta = {
        "dagster/row_count": len(spans), "banks": MetadataValue.json(banks), "layers spanned": MetadataValue.json(spanned),
        "layers mean-ablated": MetadataValue.json([l for l in range(min(stored))] + stored[:-config.layers]),
        "heads per layer": n_heads, "k": config.k, "ks": MetadataValue.json(ks), "r": config.r,
        "r used": _r_used(rank, head_dim, spans), "images": len(ids),
        "replacement top-1": MetadataValue.md(_md(replacement)),
        "top-5 texts (first bank)": MetadataValue.md(_md(
            spans.filter((pl.col("bank") == banks[0]) & (pl.col("rank") < 5))
            .group_by("layer", "head", maintain_order=True).agg(pl.col("text").str.join(" · ")))),
        **table_metadata(path),
        "replacement path": MetadataValue.path(store.table_path("head_span_replacement", model=model, dataset=dataset)),
    }
    families = spans.filter((pl.col("family") != "") & (pl.col("rank") < 5))
    if len(families):
        meta["majority family of the top-5 texts"] = MetadataValue.md(_md(span_families(families)))
    meta |= png_metadata(plot_curve(replacement, f"TextSpan replacement, {model} × {dataset}"),
                         store.figure_path("head_spans", f"{model}--{dataset}-replacement.png"), "replacement curve")
    return MaterializeResult(metadata=meta)


def majority_families(families: list[str]) -> tuple[str, ...]:
    """The most frequent family among a head's texts; every one of them on a tie (sorted)."""
    counts = {f: families.count(f) for f in set(families)}
    top = max(counts.values())
    return tuple(sorted(f for f, n in counts.items() if n == top))


def span_families(spans: pl.DataFrame) -> pl.DataFrame:
    """Per bank × head (texts with a family): the majority family of its texts ("a+b" on a tie) and its share."""
    heads = spans.sort("rank").group_by("bank", "layer", "head", maintain_order=True).agg("family").sort("bank", "layer", "head")
    fams = heads["family"].to_list()
    return heads.drop("family").with_columns(
        pl.Series("majority_family", ["+".join(majority_families(f)) for f in fams]),
        pl.Series("share", [f.count(majority_families(f)[0]) / len(f) for f in fams]))


class LabelConfig(Config):
    labeler: str = "embedding"  # "embedding" (offline, bundled sentence model) or "llm" (OpenAI-compatible endpoint)
    threshold: float = Field(default=0.5, ge=-1, le=1)  # embedding labeler: a text matches the head's label when sim ≥ threshold
    top: int = Field(default=5, ge=1)  # texts per head that are labelled (CLIP-InterpreT: 5)


@asset(code_version="1", partitions_def=model_dataset, group_name="head_spans", kinds={"parquet"}, deps=[head_spans])
def head_labels(context: AssetExecutionContext, config: LabelConfig, store: ArtifactStore,
                labelers: HeadLabelers) -> MaterializeResult:
    """Per head × bank: a property label of its top texts, which of them match it, and their similarities."""
    from cliplab.heads.labels import TOYWORLD_FAMILY_LABELS

    model, dataset = model_and_dataset(context)
    if config.labeler == "embedding":
        labeler = labelers.embedding(config.threshold)
    elif config.labeler == "llm":
        labeler = labelers.llm()
    else:
        raise CliplabError(f'config labeler must be "embedding" or "llm"; got {config.labeler!r}')
    spans = store.read("head_spans", model=model, dataset=dataset).filter(pl.col("rank") < config.top).collect()
    heads = (spans.sort("rank").group_by("bank", "layer", "head", maintain_order=True)
             .agg("text", "family").sort("bank", "layer", "head"))
    labels = labeler.label(heads["text"].to_list())
    table = heads.with_columns(
        pl.lit(labeler.name).alias("labeler"),
        pl.Series("label", [h.label for h in labels]),
        pl.Series("matches", [list(h.matches) for h in labels], dtype=pl.List(pl.Boolean)),
        pl.Series("similarities", [list(h.similarities) if h.similarities else None for h in labels],
                  dtype=pl.List(pl.Float64)),
        pl.lit(config.threshold if config.labeler == "embedding" else None, dtype=pl.Float64).alias("threshold"),
    ).rename({"text": "texts", "family": "families"}).with_columns(pl.col("matches").list.sum().alias("n_matches"))
    path = store.write("head_labels", table, model=model, dataset=dataset)
    meta = {"dagster/row_count": len(table), "labeler": labeler.name, "threshold": config.threshold,
            "labels": MetadataValue.md(_md(table.select("bank", "layer", "head", "label", "n_matches"))),
            **table_metadata(path)}
    truth = family_agreement(table, TOYWORLD_FAMILY_LABELS)
    if truth is not None:
        meta["label agrees with the majority family of the top texts"] = truth["agreement"]
        meta["agreement by chance"] = truth["chance"]
    return MaterializeResult(metadata=meta)


def family_agreement(labels: pl.DataFrame, family_labels: dict[str, tuple[str, ...]]) -> dict | None:
    """On banks whose texts carry a family: the fraction of heads whose label names the majority family of
    their labelled texts (any of them on a tie), and what a uniformly random vocabulary label would get
    (None without families)."""
    from cliplab.heads.labels import PROPERTY_VOCABULARY

    rows = labels.filter(pl.col("families").list.eval(pl.element() != "").list.all())
    if not len(rows):
        return None
    accepted = [{lab for f in majority_families(fams) for lab in family_labels.get(f, ())}
                for fams in rows["families"].to_list()]
    hits = [label in ok for label, ok in zip(rows["label"].to_list(), accepted)]
    chance = np.mean([len(ok) / len(PROPERTY_VOCABULARY) for ok in accepted])
    return {"agreement": float(np.mean(hits)), "chance": float(chance), "heads": len(rows), "hits": hits}


class ScoreConfig(Config):
    min_matches: int = Field(default=3, ge=1)  # association: a head is associated when ≥ 3 of its 5 texts match its label


@asset(code_version="1", partitions_def=model_dataset, group_name="head_spans", kinds={"parquet"}, deps=[head_labels])
def head_scores(context: AssetExecutionContext, config: ScoreConfig, store: ArtifactStore) -> MaterializeResult:
    """Per bank × labeler: association and entanglement (one row per entanglement reading, named in `entanglement_reading`)."""
    from cliplab.heads.scores import (
        ENTANGLEMENT_READINGS,
        association_score,
        entanglement_score,
    )

    model, dataset = model_and_dataset(context)
    labels = store.read("head_labels", model=model, dataset=dataset).collect()
    rows = []
    for (bank, labeler), group in labels.group_by("bank", "labeler", maintain_order=True):
        association = association_score(group["label"].to_list(), group["matches"].to_list(), config.min_matches)
        for reading in ENTANGLEMENT_READINGS:
            rows.append({"bank": bank, "labeler": labeler, "entanglement_reading": reading,
                         "entanglement": entanglement_score(group["label"].to_list(), reading),
                         "association": association, "n_heads": len(group),
                         "distinct_labels": group["label"].n_unique()})
    table = pl.DataFrame(rows, schema_overrides={"n_heads": pl.Int32, "distinct_labels": pl.Int32})
    path = store.write("head_scores", table, model=model, dataset=dataset)
    return MaterializeResult(metadata={"dagster/row_count": len(table), "scores": MetadataValue.md(_md(table)),
                                       **table_metadata(path)})


# Published (Madasu et al., CLIP-InterpreT, Tables 1–2; ../shared/methods/head-spans.md §3): labels by
# ChatGPT from ImageNet TextSpan texts, formula of the entanglement score not published.
PUBLISHED_SCORES = (
    ("vit-b-32.openai", 0.437, 0.437), ("vit-b-32.datacomp", 0.52, 0.145),
    ("vit-b-16.openai", 0.5, 0.354), ("vit-b-16.laion2b", 0.541, 0.166),
    ("vit-l-14.openai", 0.359, 0.453), ("vit-l-14.laion2b", 0.343, 0.562),
)


def published_scores() -> pl.DataFrame:
    return pl.DataFrame(
        [{"model": m, "dataset": "imagenet", "source": "published", "bank": GENERAL_BANK, "labeler": "chatgpt",
          "entanglement_reading": "published (formula not given)", "entanglement": e, "association": a,
          "n_heads": None, "distinct_labels": None} for m, e, a in PUBLISHED_SCORES],
        schema_overrides={"n_heads": pl.Int32, "distinct_labels": pl.Int32})


@asset(code_version="1", group_name="head_spans", kinds={"parquet"}, deps=[head_scores])
def head_score_table(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
    """Every materialised head_scores partition side by side, with the published values as `source = published` rows."""
    ours = store.scan("head_scores").collect().with_columns(pl.lit("cliplab").alias("source"))
    published = published_scores()
    table = pl.concat([ours.select(published.columns), published]).sort("source", "model", "dataset", "bank")
    path = store.write("head_score_table", table)
    return MaterializeResult(metadata={"dagster/row_count": len(table), "partitions": ours.select("model", "dataset").n_unique(),
                                       "table": MetadataValue.md(_md(table)), **table_metadata(path)})

"""Queries over the per-head LanceDB tables (`head_contributions`, `text_bank_embeddings`) for one partition.

Every query is scoped to one (model, dataset) and, for head vectors, one (layer, head) with a LanceDB
`where` filter; the nearest-neighbour queries are LanceDB vector searches with the "dot" metric
(LanceDB reports `_distance = 1 − q·v`; `score` below is q·v). With no vector index on the table the
search is an exact scan of the filtered rows.
"""

import numpy as np
import polars as pl

from cliplab.errors import CliplabError
from resources.lance import LanceStore, _sql_str

HEADS_TABLE = "head_contributions"
TEXTS_TABLE = "text_bank_embeddings"


class HeadIndex:
    """The stored head contributions and text banks of one (model, dataset) partition."""

    def __init__(self, lance: LanceStore, model: str, dataset: str):
        self.lance, self.model, self.dataset = lance, model, dataset
        self.scope = f"model = {_sql_str(model)} AND dataset = {_sql_str(dataset)}"
        self._heads = None

    def _table(self, name: str):
        try:
            return self.lance.table(name, model=self.model)
        except CliplabError:
            raise CliplabError(f"{name} is not materialised (no LanceDB table {name!r} under {self.lance.uri}); "
                               f"materialise the `heads` job for model={self.model} dataset={self.dataset}") from None

    def heads(self) -> pl.DataFrame:
        """(layer, head) pairs stored for this partition, sorted; an error naming the partition when none are."""
        if self._heads is None:
            table = self._table(HEADS_TABLE)
            cells = (table.search().where(self.scope).select(["layer", "head"]).limit(None).to_polars()
                     .unique().sort("layer", "head"))
            if cells.is_empty():
                raise CliplabError(f"head_contributions has no rows for model={self.model} dataset={self.dataset}: "
                                   "materialise the `heads` job for this partition first")
            self._heads = cells
        return self._heads

    def check_head(self, layer: int, head: int) -> None:
        """An error listing the stored layers and heads unless (layer, head) is stored."""
        cells = self.heads()
        if cells.filter((pl.col("layer") == layer) & (pl.col("head") == head)).is_empty():
            layers = sorted(set(cells["layer"].to_list()))
            n_heads = cells["head"].max() + 1
            raise CliplabError(f"layer {layer} head {head} is not stored for model={self.model} dataset={self.dataset}: "
                               f"stored layers {layers}, heads 0..{n_heads - 1}")

    def vectors(self, pairs: list[tuple[int, int]]) -> tuple[list[str], np.ndarray]:
        """(image ids (n,), contributions (n, P, d)) of every stored image for the P heads `pairs`, in that order."""
        for layer, head in pairs:
            self.check_head(layer, head)
        cells = " OR ".join(f"(layer = {int(l)} AND head = {int(h)})" for l, h in pairs)
        rows = (self._table(HEADS_TABLE).search().where(f"{self.scope} AND ({cells})")
                .select(["image_id", "layer", "head", "vector"]).limit(None).to_polars())
        slots = pl.DataFrame({"layer": [l for l, _ in pairs], "head": [h for _, h in pairs],
                              "slot": range(len(pairs))}, schema_overrides={"layer": rows["layer"].dtype,
                                                                            "head": rows["head"].dtype})
        rows = rows.join(slots, on=["layer", "head"]).sort("image_id", "slot")
        ids = rows["image_id"].unique(maintain_order=True).to_list()
        if len(rows) != len(ids) * len(pairs):
            raise CliplabError(f"head_contributions for model={self.model} dataset={self.dataset} is incomplete: "
                               f"{len(rows)} rows for {len(ids)} images × {len(pairs)} heads")
        return ids, np.stack(rows["vector"].to_numpy()).reshape(len(ids), len(pairs), -1).astype(np.float32)

    def vector(self, image_id: str, layer: int, head: int) -> np.ndarray | None:
        """The stored c_{l,h} (d,) of `image_id`, or None when that image is not stored."""
        self.check_head(layer, head)
        rows = (self._table(HEADS_TABLE).search()
                .where(f"{self.scope} AND layer = {int(layer)} AND head = {int(head)} AND image_id = {_sql_str(image_id)}")
                .select(["vector"]).limit(1).to_polars())
        return None if rows.is_empty() else np.asarray(rows["vector"][0], dtype=np.float32)

    def search(self, query: np.ndarray, layer: int, head: int, k: int, exclude: str | None = None) -> pl.DataFrame:
        """Top-k stored images by q · c_{l,h}(y) (LanceDB vector search, metric dot): rank, image_id, score."""
        self.check_head(layer, head)
        where = f"{self.scope} AND layer = {int(layer)} AND head = {int(head)}"
        if exclude is not None:
            where += f" AND image_id != {_sql_str(exclude)}"
        hits = (self._table(HEADS_TABLE).search(np.asarray(query, np.float32)).distance_type("dot")
                .where(where, prefilter=True).select(["image_id", "_distance"]).limit(k).to_polars())
        return pl.DataFrame({"rank": np.arange(1, len(hits) + 1, dtype=np.int64), "image_id": hits["image_id"],
                             "score": (1.0 - hits["_distance"].cast(pl.Float64)).to_numpy()})

    def texts(self, bank: str) -> pl.DataFrame:
        """One text bank: text_index, text, family, vector (unit embeddings), sorted by text_index."""
        rows = (self._table(TEXTS_TABLE).search().where(f"{self.scope} AND bank = {_sql_str(bank)}")
                .select(["text_index", "text", "family", "vector"]).limit(None).to_polars())
        if rows.is_empty():
            raise CliplabError(f"text_bank_embeddings has no bank {bank!r} for model={self.model} dataset={self.dataset}")
        return rows.sort("text_index")

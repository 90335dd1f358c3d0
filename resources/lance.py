"""LanceDB vectors (`<artifacts>/lancedb`): one table per asset and vector width, rows tagged with model and dataset.

A partition is replaced in one commit (`merge_insert` … `when_not_matched_by_source_delete` scoped to the
partition), so readers see the old rows or the new ones, never a mix. A LanceDB vector column has one fixed
width, and models differ (the toy CLIP 128, ViT-B/32 512, ViT-L/14 768): the first width written keeps the
asset's name (`head_contributions`), each other width gets its own table (`head_contributions__d512`).
`table(name, model=...)` finds the one that holds a model's rows.
"""

from __future__ import annotations

import pyarrow as pa
from dagster import ConfigurableResource

from cliplab.errors import CliplabError
from resources.registry import validate_key


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _width(schema: pa.Schema) -> int | None:
    """The fixed width of the `vector` column (None without one)."""
    if "vector" not in schema.names:
        return None
    kind = schema.field("vector").type
    return kind.list_size if pa.types.is_fixed_size_list(kind) else None


class LanceStore(ConfigurableResource):
    uri: str = "./artifacts/lancedb"

    def connect(self):
        import lancedb

        return lancedb.connect(self.uri)

    def replace_partition(self, table: str, data: pa.Table, model: str, dataset: str, key: str) -> int:
        """Make `table`'s rows for (model, dataset) exactly `data` (which must carry `model`, `dataset` and `key`)."""
        validate_key(model, "model key"), validate_key(dataset, "dataset key")
        for col in ("model", "dataset", key):
            if col not in data.column_names:
                raise CliplabError(f"LanceDB table {table!r}: rows lack column {col!r}")
        db = self.connect()
        width = _width(data.schema)
        same = [name for name, w in self._variants(db, table).items() if w == width]
        name = same[0] if same else table if table not in db.list_tables().tables else f"{table}__d{width}"
        scope = f"model = {_sql_str(model)} AND dataset = {_sql_str(dataset)}"
        if name not in db.list_tables().tables:
            db.create_table(name, data=data)
        else:
            (
                db.open_table(name)
                .merge_insert(["model", "dataset", key])
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(scope)
                .execute(data)
            )
        for other in self._variants(db, table):  # the partition's rows of another width (new weights, new architecture)
            if other != name:
                db.open_table(other).delete(scope)
        return len(data)

    @staticmethod
    def _variants(db, table: str) -> dict[str, int | None]:
        """The physical tables of logical `table` → their vector width."""
        names = [n for n in db.list_tables().tables if n == table or n.startswith(f"{table}__d")]
        return {n: _width(db.open_table(n).schema) for n in names}

    def table(self, table: str, model: str | None = None, width: int | None = None):
        """The physical table of `table` holding `model`'s rows (or vectors of `width`); with neither, the only one."""
        db = self.connect()
        variants = self._variants(db, table)
        if not variants:
            raise CliplabError(f"LanceDB at {self.uri} has no table {table!r}")
        if width is not None:
            names = [n for n, w in variants.items() if w == width]
        elif model is not None:
            names = [n for n in variants if db.open_table(n).count_rows(f"model = {_sql_str(validate_key(model, 'model key'))}")]
        else:
            names = list(variants)
        if not names and model is not None:  # nothing stored for the model: the caller's empty read says so
            names = [table if table in variants else sorted(variants)[0]]
        if len(names) != 1:
            what = f"model {model!r}" if model else f"width {width}" if width else "any model (tables per width: pass the model)"
            raise CliplabError(f"LanceDB table {table!r} at {self.uri}: {len(names)} tables hold {what}: {sorted(variants)}")
        return db.open_table(names[0])

    def delete_partitions(self, model: str, dataset: str | None = None) -> int:
        """Delete every table's rows of `model` (and `dataset`, when given); returns how many were deleted."""
        validate_key(model, "model key")
        scope = f"model = {_sql_str(model)}" + (f" AND dataset = {_sql_str(validate_key(dataset, 'dataset key'))}" if dataset else "")
        db, deleted = self.connect(), 0
        for name in db.list_tables().tables:
            t = db.open_table(name)
            if {"model", "dataset"} <= set(t.schema.names):
                before = t.count_rows()
                t.delete(scope)
                deleted += before - t.count_rows()
        return deleted

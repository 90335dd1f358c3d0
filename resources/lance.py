"""LanceDB vectors (`<artifacts>/lancedb`): one table per asset, rows tagged with their model and dataset.

A partition is replaced in one commit (`merge_insert` … `when_not_matched_by_source_delete` scoped to the
partition), so readers see the old rows or the new ones, never a mix.
"""

from __future__ import annotations

import pyarrow as pa
from dagster import ConfigurableResource

from cliplab.errors import CliplabError
from resources.registry import validate_key


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


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
        if table not in db.list_tables().tables:
            db.create_table(table, data=data)
            return len(data)
        scope = f"model = {_sql_str(model)} AND dataset = {_sql_str(dataset)}"
        (
            db.open_table(table)
            .merge_insert(["model", "dataset", key])
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(scope)
            .execute(data)
        )
        return len(data)

    def table(self, table: str):
        db = self.connect()
        if table not in db.list_tables().tables:
            raise CliplabError(f"LanceDB at {self.uri} has no table {table!r}")
        return db.open_table(table)

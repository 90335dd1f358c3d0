"""LanceDB vectors (`<artifacts>/lancedb`): one table per asset and vector width, rows tagged with model and dataset.

A partition is replaced in one commit (`merge_insert` … `when_not_matched_by_source_delete` scoped to the
partition), so readers see the old rows or the new ones, never a mix. A LanceDB vector column has one fixed
width, and models differ (the toy CLIP 128, ViT-B/32 512, ViT-L/14 768): the first width written keeps the
asset's name (`head_contributions`), each other width gets its own table (`head_contributions__d512`).
`table(name, model=...)` finds the one that holds a model's rows.
"""

from __future__ import annotations

import contextlib
import datetime
import random
import time

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


def _require_columns(table: str, schema: pa.Schema, key: str) -> None:
    for col in ("model", "dataset", key):
        if col not in schema.names:
            raise CliplabError(f"LanceDB table {table!r}: rows lack column {col!r}")


def _variant_names(db, table: str) -> list[str]:
    """The names of logical `table`'s physical tables (one per vector width)."""
    return [n for n in db.list_tables().tables if n == table or n.startswith(f"{table}__d")]


WRITE_ATTEMPTS = 8  # commits that lose a race with another writer are retried on the new version


def _retried(commit, what: str):
    """Run a LanceDB commit, again on a newer version when a concurrent writer committed first."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            return commit()
        except Exception as err:  # noqa: BLE001 — Lance reports a lost commit race under several types
            if attempt == WRITE_ATTEMPTS - 1 or "schema" in str(err).lower():  # a wrong schema never heals
                raise CliplabError(f"{what}: {err}") from err
            time.sleep(0.05 * 2**attempt * (1 + random.random()))


class LanceStore(ConfigurableResource):
    uri: str = "./artifacts/lancedb"
    # after each write, versions older than this are removed and small fragments compacted (readers older than it
    # may lose their snapshot); 0 keeps only the latest
    keep_versions_s: int = 600

    def connect(self):
        import lancedb

        from resources.objectstore import lance_options

        options = lance_options(self.uri)  # an object-store URI: endpoint and keys from the AWS variables
        return lancedb.connect(self.uri, storage_options=options) if options else lancedb.connect(self.uri)

    def replace_partition(self, table: str, data: pa.Table, model: str, dataset: str, key: str) -> int:
        """Make `table`'s rows for (model, dataset) exactly `data` (which must carry `model`, `dataset` and `key`).
        Safe with other processes writing other partitions of the same table, even while they create it."""
        validate_key(model, "model key"), validate_key(dataset, "dataset key")
        _require_columns(table, data.schema, key)
        self._commit(table, data.schema, lambda: data, model, dataset, key)
        return len(data)

    def _commit(self, table: str, schema: pa.Schema, source, model: str, dataset: str, key: str) -> None:
        """The one commit of a partition: `source()` (called again for each retried attempt) gives its rows; a
        `merge_insert` … `when_not_matched_by_source_delete` scoped to the partition, then the partition's rows of
        another width (new weights, new architecture) deleted and the table tidied."""
        db = self.connect()
        target = self._create_or_open(db, table, schema)
        scope = f"model = {_sql_str(model)} AND dataset = {_sql_str(dataset)}"

        def write():
            target.checkout_latest()  # a retry must build on the version it lost against, not the one it read
            return (target.merge_insert(["model", "dataset", key]).when_matched_update_all()
                    .when_not_matched_insert_all().when_not_matched_by_source_delete(scope).execute(source()))

        _retried(write, f"LanceDB table {target.name!r}: writing model={model}, dataset={dataset}")
        for other in _variant_names(db, table):
            if other != target.name:
                _retried(lambda other=other: db.open_table(other).delete(scope), f"LanceDB table {other!r}: deleting {scope}")
        self._tidy(target)

    def replace_partition_stream(self, table: str, batches, model: str, dataset: str, key: str,
                                 schema: pa.Schema | None = None, spool_dir: str | None = None) -> int:
        """`replace_partition` for a partition too large to hold in memory: `batches` (an iterable of Arrow tables or
        record batches, all of `schema`, default the first one's) are spooled to a local Arrow IPC file as they
        come, then committed in the same single `merge_insert` … `when_not_matched_by_source_delete`, which reads
        the file back batch by batch (Lance spills its join to disk). Memory does not grow with the partition;
        readers see the old rows or the new ones; nothing is committed until `batches` is exhausted, so a failure
        while computing them keeps the old partition; a commit retried after a lost race re-reads the file.
        The spool (as large as the partition's rows) goes to `spool_dir`, default the system's temporary folder."""
        import tempfile
        from pathlib import Path

        validate_key(model, "model key"), validate_key(dataset, "dataset key")
        with tempfile.TemporaryDirectory(prefix="cliplab-lance-spool-", dir=spool_dir) as tmp:
            path, n, spool = str(Path(tmp) / "rows.arrows"), 0, None

            def open_spool(schema: pa.Schema):
                _require_columns(table, schema, key)
                sink = pa.OSFile(path, "wb")
                return sink, pa.ipc.new_stream(sink, schema)

            try:
                if schema is not None:
                    spool = open_spool(schema)
                for batch in batches:
                    if spool is None:
                        schema = batch.schema
                        spool = open_spool(schema)
                    if not batch.schema.equals(schema):
                        raise CliplabError(f"LanceDB table {table!r}: a batch's schema differs from the first's:\n"
                                           f"{batch.schema}\nvs\n{schema}")
                    if isinstance(batch, pa.Table):
                        spool[1].write_table(batch)
                    else:
                        spool[1].write_batch(batch)
                    n += batch.num_rows
            finally:
                if spool is not None:
                    spool[1].close()
                    spool[0].close()
            if spool is None:
                raise CliplabError(f"LanceDB table {table!r}: no rows and no schema given for model={model}, "
                                   f"dataset={dataset}")
            with contextlib.ExitStack() as readers:  # a fresh reader per attempt: the file is replayed, not held
                self._commit(table, schema, lambda: pa.ipc.open_stream(readers.enter_context(pa.OSFile(path, "rb"))),
                             model, dataset, key)
        return n

    def _create_or_open(self, db, table: str, schema: pa.Schema):
        """The physical table of logical `table` for `schema`'s vector width, created empty when there is none. At
        most one per width even when writers race: a create that loses opens the winner's table."""
        width = _width(schema)
        for _ in range(WRITE_ATTEMPTS):
            variants = self._variants(db, table)
            same = sorted(n for n, w in variants.items() if w == width)
            if same:
                return db.open_table(same[0])
            name = table if table not in variants else f"{table}__d{width}"
            try:
                created = db.create_table(name, schema=schema)  # mode "create": a second creator fails, then opens
            except Exception:  # noqa: BLE001 — lost a race on the table's first commit: look again
                time.sleep(0.05 + random.random() * 0.2)
                continue
            if _width(created.schema) == width:
                return created
        raise CliplabError(f"LanceDB at {self.uri}: could not create or open table {table!r} (width {width})")

    def _tidy(self, target) -> None:
        """Compact the table and remove versions older than keep_versions_s (housekeeping: a writer that races it
        retries its own commit, and a failed tidy is left for the next write)."""
        with contextlib.suppress(Exception):
            target.optimize(cleanup_older_than=datetime.timedelta(seconds=self.keep_versions_s))

    @staticmethod
    def _variants(db, table: str) -> dict[str, int | None]:
        """The physical tables of logical `table` → their vector width (a table another writer is still creating
        and cannot be opened yet is left out)."""
        out = {}
        for name in _variant_names(db, table):
            with contextlib.suppress(Exception):
                out[name] = _width(db.open_table(name).schema)
        return out

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

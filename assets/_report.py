"""What assets attach to their materialisations: pictures in metadata, progress in logs and on a terminal."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from dagster import MetadataValue

FIGURE_URL_DEFAULT = "http://127.0.0.1:3001"


def png_metadata(png: bytes, path: Path | str, title: str) -> dict:
    """A PNG saved beside the artifacts (`path`, under the root's `_figures/`, the latest one) and shown inline from
    the figure server (`cliplab ui`, at $CLIPLAB_FIGURE_URL) by a content-addressed copy, so each materialisation in
    the event log keeps its own picture and the log carries a URL, not the image. `path` may be an object-store URI
    (an artifact root on S3): both objects are then written there, each in one PUT, and the server reads them back."""
    digest = hashlib.sha256(png).hexdigest()[:20]
    url = f"{os.environ.get('CLIPLAB_FIGURE_URL', FIGURE_URL_DEFAULT).rstrip('/')}/_sha256/{digest}.png"
    if isinstance(path, str) and "://" in path:
        from resources.objectstore import write_bytes

        figures = path[: path.index("/_figures/") + len("/_figures")] if "/_figures/" in path else path.rsplit("/", 1)[0]
        for target in (path, f"{figures}/_sha256/{digest}.png"):
            write_bytes(target, png)
        return {title: MetadataValue.md(f"![{title}]({url})"), f"{title} (file)": MetadataValue.path(path)}
    path = Path(path)
    figures = next((Path(*path.parts[: i + 1]) for i, part in enumerate(path.parts) if part == "_figures"), path.parent)
    versioned = figures / "_sha256" / f"{digest}.png"
    for target in (path, versioned):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(png)
        tmp.replace(target)
    return {
        title: MetadataValue.md(f"![{title}]({url})"),
        f"{title} (file)": MetadataValue.path(str(path.resolve())),
    }


class Progress:
    """Counts items; logs count and throughput to Dagster every `every` seconds; a tqdm bar on a terminal."""

    def __init__(self, context, total: int, what: str, every: float = 10.0):
        from tqdm import tqdm

        self.context, self.total, self.what, self.every = context, total, what, every
        self.done, self.t0, self.last = 0, time.perf_counter(), 0.0
        self.bar = tqdm(total=total, desc=what, unit="img", disable=not sys.stderr.isatty(), leave=False)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        now = time.perf_counter() - self.t0
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.context.log.info(f"{self.what}: {self.done}/{self.total} ({self.rate:.1f}/s)")

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.t0, 1e-9)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def close(self) -> None:
        self.bar.close()


PREVIEW_ROWS = 20


def table_metadata(path: str) -> dict:
    """A written Parquet partition described for the UI: its path, row count, column schema and, for a small table of
    plain columns, the rows themselves (read from the file's footer; the rows only when small)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dagster import TableColumn, TableRecord, TableSchema

    meta: dict = {"path": MetadataValue.path(path)}
    try:
        schema = pq.read_schema(path)
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowInvalid):  # not a local file (an object-store root): the path alone
        return meta
    columns = [TableColumn(f.name, str(f.type)) for f in schema]
    meta |= {"dagster/row_count": rows, "dagster/column_schema": TableSchema(columns=columns)}
    plain = all(pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
                or pa.types.is_string(f.type) or pa.types.is_large_string(f.type) for f in schema)
    if plain and 0 < rows <= PREVIEW_ROWS:
        records = [TableRecord(r) for r in pq.read_table(path).to_pylist()]
        meta["preview"] = MetadataValue.table(records, schema=TableSchema(columns=columns))
    return meta

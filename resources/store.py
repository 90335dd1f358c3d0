"""Artifact store: Parquet tables in a hive layout under one root URI, written atomically.

`<root>/<asset>/model=<m>/dataset=<d>/part-0.parquet` — one file per partition, so a partition is
replaced by one rename and `pl.scan_parquet(f"{root}/<asset>/**/*.parquet", hive_partitioning=True)`
reads every partition with `model` and `dataset` columns. Files are staged under `<root>/.staging/`
(outside every asset's tree, so scans never see half-written data) and moved into place only when
complete: a killed run leaves the old partition or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from dagster import ConfigurableResource

from cliplab.errors import CliplabError
from resources.objectstore import is_remote
from resources.registry import validate_key

STAGING = ".staging"
STALE_AFTER_S = 24 * 3600  # a staged file of another host (a shared root) is abandoned after this long
_OWNER = f"{socket.gethostname()}~{os.getpid()}"  # who stages a file (host names have "-", never "~")


def _abandoned(name: str, mtime_ns: int | None) -> bool:
    """`name`: a staged file's name after its partition tag (`<host>~<pid>-<random>.parquet`)."""
    import psutil

    host, _, rest = name.partition("~")
    pid = rest.split("-", 1)[0]
    if host == socket.gethostname() and pid.isdigit():
        return not psutil.pid_exists(int(pid))
    return mtime_ns is None or time.time_ns() - mtime_ns > STALE_AFTER_S * 1e9


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local folder or any URI pyarrow understands (s3://, gs://, file://)."""
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), str(Path(root).resolve())


HIVE_SCHEMA = {"model": pl.String, "dataset": pl.String}


class ArtifactStore(ConfigurableResource):
    """Where every table lives. `root` is a folder or a URI (`s3://bucket/cliplab`)."""

    root: str = "./artifacts"

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return _filesystem(self.root)

    def uri(self, *parts: str) -> str:
        """The root joined with `parts`, in the root's own form (a local path or a URI)."""
        fs, base = self._fs()
        joined = "/".join([base.rstrip("/"), *parts])
        return joined if isinstance(fs, pafs.LocalFileSystem) else f"{self.root.split('://')[0]}://{joined}"

    def figure_path(self, *parts: str) -> Path | str:
        """Where a PNG attached to metadata is saved: `<root>/_figures/<parts...>` (a local path; the object's URI
        when the root is on an object store)."""
        uri = self.uri("_figures", *parts)
        return uri if is_remote(self.root) else Path(uri)

    @staticmethod
    def partition_parts(asset: str, **partition: str) -> list[str]:
        validate_key(asset.replace("_", "-"), "asset name")
        return [asset, *(f"{k}={validate_key(str(v), f'{k} key')}" for k, v in partition.items())]

    def table_path(self, asset: str, **partition: str) -> str:
        """Path of the one Parquet file of `asset` for `partition` (e.g. model=..., dataset=...), in the root's own form
        (a local path, or a URI that pyarrow and polars open: `s3://bucket/cliplab/<asset>/...`)."""
        return self.uri(*self.partition_parts(asset, **partition), "part-0.parquet")

    def _fs_path(self, asset: str, **partition: str) -> str:
        """table_path within the root's filesystem (no scheme)."""
        _, base = self._fs()
        return "/".join([base.rstrip("/"), *self.partition_parts(asset, **partition), "part-0.parquet"])

    def glob(self, asset: str) -> str:
        return self.uri(asset, "**", "*.parquet")

    @contextlib.contextmanager
    def writer(self, asset: str, schema: pa.Schema, **partition: str) -> Iterator[pq.ParquetWriter]:
        """Yield a ParquetWriter (each `write_table`/`write_batch` call = row groups); commit on exit.

        On an exception the staged file is deleted and the old partition stays untouched.
        """
        fs, base = self._fs()
        final = self._fs_path(asset, **partition)
        tag = "--".join(self.partition_parts(asset, **partition))
        staging_dir = f"{base.rstrip('/')}/{STAGING}"
        fs.create_dir(staging_dir, recursive=True)
        self._remove_stale(fs, staging_dir, tag)
        staged = f"{staging_dir}/{tag}--{_OWNER}-{uuid.uuid4().hex[:8]}.parquet"
        ok = False
        try:
            with pq.ParquetWriter(staged, schema, filesystem=fs, compression="zstd") as w:
                yield w
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(FileNotFoundError, OSError):
                    fs.delete_file(staged)
        fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        fs.move(staged, final)  # a rename on local disks: atomic

    @staticmethod
    def _remove_stale(fs: pafs.FileSystem, staging_dir: str, tag: str) -> None:
        """Staged files of this partition left by a killed run: owned by a process of this host that is gone, or by
        another host and older than STALE_AFTER_S. A live writer's file (another run of the same partition) stays."""
        for info in fs.get_file_info(pafs.FileSelector(staging_dir)):
            if info.base_name.startswith(tag + "--") and _abandoned(info.base_name[len(tag) + 2:], info.mtime_ns):
                with contextlib.suppress(FileNotFoundError, OSError):
                    fs.delete_file(info.path)

    def write(self, asset: str, table: pa.Table | pl.DataFrame, **partition: str) -> str:
        """Write a whole table atomically; return the final path."""
        if isinstance(table, pl.DataFrame):
            table = table.to_arrow()
        with self.writer(asset, table.schema, **partition) as w:
            w.write_table(table, row_group_size=max(1, min(len(table), 65536)))
        return self.table_path(asset, **partition)

    def exists(self, asset: str, **partition: str) -> bool:
        fs, _ = self._fs()
        return fs.get_file_info(self._fs_path(asset, **partition)).type == pafs.FileType.File

    def read(self, asset: str, **partition: str) -> pl.LazyFrame:
        """One partition (every hive key of `asset` given), with its keys as columns."""
        path = self.table_path(asset, **partition)
        if not self.exists(asset, **partition):
            keys = ", ".join(f"{k}={v}" for k, v in partition.items())
            raise CliplabError(f"asset {asset!r} has no materialised partition {keys} (looked for {path})")
        return pl.scan_parquet(path).with_columns(pl.lit(v).alias(k) for k, v in partition.items())

    def batches(self, asset: str, columns: list[str] | None = None, batch_size: int = 256, **partition: str):
        """(schema metadata, iterator of pyarrow RecordBatches) of one partition, read row group by row group."""
        if not self.exists(asset, **partition):
            keys = ", ".join(f"{k}={v}" for k, v in partition.items())
            raise CliplabError(f"asset {asset!r} has no materialised partition {keys} (looked for {self.table_path(asset, **partition)})")
        fs, _ = self._fs()
        f = pq.ParquetFile(self._fs_path(asset, **partition), filesystem=fs)
        meta = {k.decode(): v.decode() for k, v in (f.schema_arrow.metadata or {}).items()}
        return meta, f.iter_batches(batch_size=batch_size, columns=columns)

    def delete_partitions(self, model: str, dataset: str | None = None) -> list[str]:
        """Delete every asset's Parquet partitions of `model` (and `dataset`, when given); returns the folders removed."""
        fs, base = self._fs()
        validate_key(model, "model key")
        dataset and validate_key(dataset, "dataset key")
        removed = []
        for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
            if info.type != pafs.FileType.Directory or info.base_name.startswith((".", "_")):
                continue
            folder = f"{info.path}/model={model}"
            target = f"{folder}/dataset={dataset}" if dataset else folder
            if fs.get_file_info(target).type == pafs.FileType.Directory:
                fs.delete_dir(target)
                removed.append(target)
        return removed

    def scan(self, asset: str) -> pl.LazyFrame:
        """Every materialised partition of `asset`, with its hive keys as columns."""
        validate_key(asset.replace("_", "-"), "asset name")  # never a path out of the root ("../../x")
        fs, base = self._fs()
        root = f"{base.rstrip('/')}/{asset}"
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            raise CliplabError(f"asset {asset!r} has no materialised partitions under {self.uri(asset)}")
        # partition keys are strings, even one that looks like a number or a date ("2024")
        return pl.scan_parquet(self.glob(asset), hive_partitioning=True, hive_schema=HIVE_SCHEMA, try_parse_hive_dates=False)

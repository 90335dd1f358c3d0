"""An artifact root on an object store (`s3://bucket/cliplab`, `gs://...`): the same code path as a local folder.

Parquet (pyarrow, polars) and LanceDB read and write the store directly. The endpoint and keys come from the AWS
SDK's standard variables (AWS_ENDPOINT_URL for an S3-compatible server such as MinIO, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION), which pyarrow, polars and LanceDB all read; LanceDB is told `allow_http` when the
endpoint is plain http. What a library needs as a local file (checkpoint folders for open_clip, toyworld's images)
is fetched into a local cache, $CLIPLAB_CACHE (default ~/.cache/cliplab), one folder per artifact root, and
refreshed when the object changes. A local folder root never comes here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs


def is_remote(root: str | Path) -> bool:
    """An object-store URI (s3://, gs://, ...), not a folder on this machine (a `file://` URI is local)."""
    text = str(root)
    return "://" in text and not text.startswith("file://")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path within it) of an object-store URI."""
    return pafs.FileSystem.from_uri(uri)


def lance_options(uri: str) -> dict[str, str]:
    """LanceDB's storage_options for `uri`: `allow_http` for a plain-http endpoint (a local S3 server); the rest
    (endpoint, keys, region) LanceDB reads from the AWS variables itself."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    return {"allow_http": "true"} if is_remote(uri) and endpoint.startswith("http://") else {}


def cache_folder(root: str) -> Path:
    """The local cache of artifact root `root`: $CLIPLAB_CACHE/<sha256 of the root URI, 16 hex>."""
    base = Path(os.environ.get("CLIPLAB_CACHE") or Path.home() / ".cache" / "cliplab").expanduser()
    return base / hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:16]


def info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    return fs.get_file_info(path)


def read_bytes(uri: str) -> bytes | None:
    """The object's bytes, or None when there is none."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """One PUT: readers see the old object or the new one, never part of it."""
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


def upload(local: str | Path, uri: str) -> None:
    fs, path = filesystem(uri)
    pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download(uri: str, local: str | Path) -> Path:
    """Copy the object to `local` through a temporary name (a reader of `local` never sees part of it)."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
    fs, path = filesystem(uri)
    try:
        pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        tmp.replace(local)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return local


def cached_copy(uri: str, local: str | Path) -> Path:
    """`local`, a copy of the object `uri` kept current: downloaded again when the object's size or modification time
    changed (recorded in `<local>.source`); removed when the object is gone (so `local.is_file()` answers whether
    the object exists)."""
    local = Path(local)
    stamp = local.with_name(local.name + ".source")
    found = info(uri)
    if found.type != pafs.FileType.File:
        for p in (local, stamp):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return local
    seen = f"{uri}|{found.size}|{found.mtime_ns}"
    if not (local.is_file() and stamp.is_file() and stamp.read_text() == seen):
        download(uri, local)
        stamp.write_text(seen)
    return local

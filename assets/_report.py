"""What assets attach to their materialisations: pictures in metadata, progress in logs and on a terminal."""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

from dagster import MetadataValue


def png_metadata(png: bytes, path: Path, title: str) -> dict:
    """A PNG saved beside the artifacts and shown inline (Dagster has no image metadata type)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    tmp.write_bytes(png)
    tmp.replace(path)
    b64 = base64.b64encode(png).decode()
    return {
        title: MetadataValue.md(f"![{title}](data:image/png;base64,{b64})"),
        f"{title} (file)": MetadataValue.path(str(path)),
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

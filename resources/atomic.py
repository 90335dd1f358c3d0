"""Atomic replacement of a whole folder (checkpoints, training state): stage it beside the target, swap it in with
two renames, and put the old folder back if a process died between the two."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends it replaces `folder`. On an error it is deleted and
    `folder` is left as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover(folder)
    staged = folder.parent / f".{folder.name}.staging-{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    try:
        yield staged
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        if folder.exists():
            folder.rename(old)
        staged.rename(folder)  # a death between the two renames leaves only `old`: `recover` restores it
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def recover(folder: str | Path) -> None:
    """If a swap died between its renames (the folder gone, its `.old-*` copy left), put the old folder back."""
    folder = Path(folder)
    if folder.exists() or not folder.parent.is_dir():
        return
    olds = sorted(folder.parent.glob(f".{folder.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        olds[-1].rename(folder)

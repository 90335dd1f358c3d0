"""LanceStore.replace_partition_stream: the same partition replacement as replace_partition, from batches spooled to disk."""

import os
import tempfile

import numpy as np
import pyarrow as pa
import pytest

from assets._arrow import vectors
from cliplab.errors import CliplabError
from resources.lance import LanceStore


def _rows(model, ids, dim=8, value=1.0, dataset="toyworld"):
    return pa.table({"model": [model] * len(ids), "dataset": [dataset] * len(ids), "cell": [f"c{i}" for i in ids],
                     "vector": vectors(np.full((len(ids), dim), value, np.float32))})


def _partition(lance, model, dataset="toyworld"):
    t = lance.table("t", model=model).to_arrow().to_pydict()
    return sorted((c, v[0]) for m, d, c, v in zip(t["model"], t["dataset"], t["cell"], t["vector"]) if m == model and d == dataset)


def _spools(spool_dir) -> list:
    return [p for p in os.listdir(spool_dir) if p.startswith("cliplab-lance-spool-")]


def test_stream_replaces_exactly_the_partition_like_replace_partition(tmp_path):
    lance = LanceStore(uri=str(tmp_path / "lancedb"))
    spool = tmp_path / "spool"
    spool.mkdir()
    lance.replace_partition("t", _rows("m", range(10)), "m", "toyworld", "cell")
    lance.replace_partition("t", _rows("other", range(4)), "other", "toyworld", "cell")
    lance.replace_partition("t", _rows("m", range(3), dataset="d2"), "m", "d2", "cell")
    # batches of mixed kinds (tables and record batches); fewer rows than before, some keys new
    batches = [_rows("m", range(5, 9), value=2.0), _rows("m", range(20, 22), value=3.0).to_batches()[0]]
    assert lance.replace_partition_stream("t", iter(batches), "m", "toyworld", "cell", spool_dir=str(spool)) == 6
    assert _partition(lance, "m") == sorted([(f"c{i}", 2.0) for i in range(5, 9)] + [("c20", 3.0), ("c21", 3.0)])
    assert len(_partition(lance, "other")) == 4 and len(_partition(lance, "m", "d2")) == 3  # other partitions kept
    assert _spools(spool) == []  # the spool is removed
    # the same rows through replace_partition give the same table
    other = LanceStore(uri=str(tmp_path / "lancedb2"))
    other.replace_partition("t", pa.concat_tables([batches[0], pa.Table.from_batches([batches[1]])]), "m", "toyworld", "cell")
    assert _partition(other, "m") == _partition(lance, "m")


def test_a_failure_while_computing_keeps_the_old_partition_and_no_spool(tmp_path):
    lance = LanceStore(uri=str(tmp_path / "lancedb"))
    lance.replace_partition("t", _rows("m", range(10)), "m", "toyworld", "cell")
    before = _partition(lance, "m")

    def batches():
        yield _rows("m", range(3), value=5.0)
        raise RuntimeError("the model crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        lance.replace_partition_stream("t", batches(), "m", "toyworld", "cell", spool_dir=str(tmp_path))
    assert _partition(lance, "m") == before
    assert _spools(tmp_path) == []
    with pytest.raises(CliplabError, match="schema differs"):
        lance.replace_partition_stream("t", iter([_rows("m", range(2)), _rows("m", range(2), dim=4)]), "m", "toyworld", "cell")
    with pytest.raises(CliplabError, match="lack column 'cell'"):
        lance.replace_partition_stream("t", iter([_rows("m", range(2)).drop_columns(["cell"])]), "m", "toyworld", "cell")
    with pytest.raises(CliplabError, match="no rows and no schema"):
        lance.replace_partition_stream("t", iter([]), "m", "toyworld", "cell")
    assert _partition(lance, "m") == before


def test_a_lost_commit_is_retried_from_the_spool(tmp_path, monkeypatch):
    """The commit's first attempt fails (as when another writer wins the race): the retry re-reads the spooled rows."""
    lance = LanceStore(uri=str(tmp_path / "lancedb"))
    lance.replace_partition("t", _rows("m", range(10)), "m", "toyworld", "cell")
    opened = LanceStore._create_or_open
    calls = []

    class FlakyTable:
        def __init__(self, target):
            self.target, self.name = target, target.name

        def merge_insert(self, on):
            calls.append(on)
            if len(calls) == 1:
                raise OSError("Commit conflict for version 3: retryable")
            return self.target.merge_insert(on)

        def __getattr__(self, name):
            return getattr(self.target, name)

    monkeypatch.setattr(LanceStore, "_create_or_open", lambda self, db, table, schema: FlakyTable(opened(self, db, table, schema)))
    batches = (_rows("m", range(i, i + 2), value=7.0) for i in range(0, 6, 2))
    assert lance.replace_partition_stream("t", batches, "m", "toyworld", "cell") == 6
    assert len(calls) == 2
    assert _partition(lance, "m") == [(f"c{i}", 7.0) for i in range(6)]


def test_an_empty_stream_with_a_schema_empties_the_partition_and_a_new_width_moves_it(tmp_path):
    lance = LanceStore(uri=str(tmp_path / "lancedb"))
    lance.replace_partition("t", _rows("m", range(4)), "m", "toyworld", "cell")
    lance.replace_partition("t", _rows("keep", range(2)), "keep", "toyworld", "cell")
    assert lance.replace_partition_stream("t", iter([]), "m", "toyworld", "cell", schema=_rows("m", [0]).schema) == 0
    assert _partition(lance, "m") == [] and len(_partition(lance, "keep")) == 2
    # a new architecture (another vector width) for the same partition: its old-width rows go
    lance.replace_partition("t", _rows("m", range(4)), "m", "toyworld", "cell")
    assert lance.replace_partition_stream("t", iter([_rows("m", range(3), dim=16)]), "m", "toyworld", "cell") == 3
    assert lance.table("t", width=8).count_rows("model = 'm'") == 0
    assert lance.table("t", width=16).count_rows("model = 'm'") == 3


def test_spool_goes_to_the_system_temporary_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def batches():
        yield _rows("m", range(3))
        seen.extend(_spools(tmp_path))  # the spool exists while the rows are computed

    lance = LanceStore(uri=str(tmp_path / "lancedb"))
    assert lance.replace_partition_stream("t", batches(), "m", "toyworld", "cell") == 3
    assert len(seen) == 1 and _spools(tmp_path) == []

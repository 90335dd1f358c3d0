"""ArtifactStore: exact paths, atomic replacement, hive reads with polars."""

import polars as pl
import pyarrow as pa
import pytest

from cliplab.errors import CliplabError
from resources.store import ArtifactStore


def test_paths_and_hive_reads(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    p = store.write("mi_curves", pl.DataFrame({"x": [1, 2]}), model="toy-vit.s0", dataset="toyworld")
    store.write("mi_curves", pl.DataFrame({"x": [3]}), model="vit-b-32.openai", dataset="toyworld")
    assert p == str(tmp_path / "mi_curves/model=toy-vit.s0/dataset=toyworld/part-0.parquet")
    every = store.scan("mi_curves").sort("x").collect()
    assert every.to_dict(as_series=False) == {"x": [1, 2, 3], "model": ["toy-vit.s0"] * 2 + ["vit-b-32.openai"],
                                              "dataset": ["toyworld"] * 3}
    one = store.read("mi_curves", model="vit-b-32.openai", dataset="toyworld").collect()
    assert one.to_dict(as_series=False) == {"x": [3], "model": ["vit-b-32.openai"], "dataset": ["toyworld"]}


def test_partition_keys_that_look_like_numbers_or_dates_stay_strings(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    store.write("mi_curves", pl.DataFrame({"x": [1]}), model="toy-vit.s0", dataset="2024")
    store.write("mi_curves", pl.DataFrame({"x": [2]}), model="toy-vit.s0", dataset="2024-01-02")
    every = store.scan("mi_curves").sort("x").collect()
    assert every.schema["dataset"] == pl.String and every["dataset"].to_list() == ["2024", "2024-01-02"]


def test_rewrite_replaces_and_failed_write_keeps_the_old_partition(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    store.write("t", pl.DataFrame({"x": [1]}), model="m", dataset="d")
    store.write("t", pl.DataFrame({"x": [7, 8]}), model="m", dataset="d")
    assert store.read("t", model="m", dataset="d").collect()["x"].to_list() == [7, 8]
    schema = pa.schema([("x", pa.int64())])
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer("t", schema, model="m", dataset="d") as w:
            w.write_table(pa.table({"x": [100]}, schema=schema))
            raise RuntimeError("boom")
    assert store.read("t", model="m", dataset="d").collect()["x"].to_list() == [7, 8]
    assert list((tmp_path / ".staging").iterdir()) == []


def test_missing_partition_and_bad_keys(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    with pytest.raises(CliplabError, match="has no materialised partition model=m, dataset=d"):
        store.read("t", model="m", dataset="d")
    with pytest.raises(CliplabError, match="has no materialised partitions"):
        store.scan("t")
    with pytest.raises(CliplabError, match="invalid model key"):
        store.write("t", pl.DataFrame({"x": [1]}), model="../etc", dataset="d")


def test_an_asset_name_cannot_leave_the_root(tmp_path):
    store = ArtifactStore(root=str(tmp_path / "root"))
    (tmp_path / "x").mkdir()
    pl.DataFrame({"secret": [1]}).write_parquet(tmp_path / "x" / "part-0.parquet")
    with pytest.raises(CliplabError, match="invalid asset name"):
        store.scan("../x")

"""LanceStore: models of different embedding widths side by side; partitions replaced and deleted exactly."""

import numpy as np
import pyarrow as pa
import pytest

from assets._arrow import vectors
from cliplab.errors import CliplabError
from resources.lance import LanceStore


def _rows(model, dim, n=3, value=1.0):
    return pa.table({"model": [model] * n, "dataset": ["toyworld"] * n, "class_index": pa.array(range(n), pa.int64()),
                     "vector": vectors(np.full((n, dim), value, np.float32))})


def test_models_of_different_widths_share_one_logical_table(tmp_path):
    lance = LanceStore(uri=str(tmp_path / "lancedb"))
    lance.replace_partition("class_text_embeddings", _rows("toy-vit.s0", 128), "toy-vit.s0", "toyworld", "class_index")
    lance.replace_partition("class_text_embeddings", _rows("vit-b-32.mine", 512), "vit-b-32.mine", "toyworld", "class_index")
    lance.replace_partition("class_text_embeddings", _rows("vit-b-32.other", 512, 2), "vit-b-32.other", "toyworld", "class_index")
    toy = lance.table("class_text_embeddings", model="toy-vit.s0")
    big = lance.table("class_text_embeddings", model="vit-b-32.mine")
    assert toy.name == "class_text_embeddings" and big.name == "class_text_embeddings__d512"
    assert big.count_rows() == 5 and toy.count_rows() == 3
    assert lance.table("class_text_embeddings", width=512).name == big.name
    hits = big.search(np.ones(512, np.float32)).where("model = 'vit-b-32.other'", prefilter=True).limit(10).to_arrow()
    assert hits.num_rows == 2  # vector search works per width
    with pytest.raises(CliplabError, match="pass the model"):
        lance.table("class_text_embeddings")


def test_a_partition_that_changes_width_leaves_no_rows_behind(tmp_path):
    lance = LanceStore(uri=str(tmp_path / "lancedb"))
    lance.replace_partition("t", _rows("m", 128), "m", "toyworld", "class_index")
    lance.replace_partition("t", _rows("m", 512, 2), "m", "toyworld", "class_index")  # new architecture, same key
    assert lance.table("t", width=128).count_rows() == 0
    assert lance.table("t", model="m").count_rows() == 2
    assert lance.delete_partitions("m") == 2 and lance.table("t", width=512).count_rows() == 0

"""Vectors as Arrow columns: one fixed-size float32 list per row (what Parquet, polars and LanceDB read as arrays)."""

import numpy as np
import pyarrow as pa


def vectors(values, width: int | None = None, dtype=np.float32) -> pa.FixedSizeListArray:
    """Float array → fixed-size lists of `width` (default: everything after the first axis, flattened row-major),
    float32 by default, or float16 (`dtype=np.float16`, Parquet's FLOAT16; polars reads it as Float16)."""
    values = np.asarray(values, dtype=dtype)
    flat = np.ascontiguousarray(values).reshape(-1, width or int(np.prod(values.shape[1:])))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.from_numpy_dtype(dtype)), flat.shape[1])

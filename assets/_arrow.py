"""Vectors as Arrow columns: one fixed-size float32 list per row (what Parquet, polars and LanceDB read as arrays)."""

import numpy as np
import pyarrow as pa


def vectors(values, width: int | None = None) -> pa.FixedSizeListArray:
    """Float array → fixed-size float32 lists of `width` (default: everything after the first axis, flattened row-major)."""
    values = np.asarray(values, dtype=np.float32)
    flat = np.ascontiguousarray(values).reshape(-1, width or int(np.prod(values.shape[1:])))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()), flat.shape[1])

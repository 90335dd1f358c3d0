"""cliplab: the science. Pure functions over tensors and arrays; no Dagster, no paths."""

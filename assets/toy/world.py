"""toyworld: the embedded default dataset (no GPU, no download), generated from a seed."""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets._report import png_metadata
from cliplab import plots
from cliplab.toy import toyworld as tw
from resources.datasets import TOYWORLD_SCHEMA, toyworld_table
from resources.registry import TOYWORLD_KEY
from resources.store import ArtifactStore


class ToyworldConfig(Config):
    seed: int = Field(default=0, ge=0)
    n_train: int = Field(default=16000, ge=1)
    n_val: int = Field(default=1200, ge=1)
    image_size: int = Field(default=64, ge=8)


@asset(code_version="1", group_name="toy", kinds={"parquet"})
def toyworld(context: AssetExecutionContext, config: ToyworldConfig, store: ArtifactStore) -> MaterializeResult:
    """Procedural images of objects made of named parts, with captions, attributes and part masks (train + val)."""
    counts = {}
    for split, n in (("train", config.n_train), ("val", config.n_val)):
        with store.writer("toyworld", TOYWORLD_SCHEMA, split=split) as w:
            for start in range(0, n, 1000):
                batch = tw.generate(config.seed, split, min(1000, n - start), config.image_size, start=start)
                w.write_table(toyworld_table(batch, split))
        counts[split] = n
        context.log.info(f"toyworld {split}: {n} images")
    context.instance.add_dynamic_partitions("dataset", [TOYWORLD_KEY])
    sample = tw.generate(config.seed, "val", 8, config.image_size)
    return MaterializeResult(metadata={
        "dagster/row_count": sum(counts.values()),
        "train images": counts["train"], "val images": counts["val"],
        "classes": MetadataValue.json({s.name: list(s.parts) for s in tw.CLASSES}),
        "seed": config.seed,
        **png_metadata(plots.image_grid(sample.images, sample.captions), store.figure_path("toyworld.png"), "samples"),
    })

"""The dataset catalog: a dataset key → its manifest (images, labels, class names, templates) and image batches.

toyworld is read from the `toyworld` asset's Parquet files (rendered images as PNG, ground-truth part
maps, captions, attributes); folder datasets (imagefolder, ImageNet-val, Food-101, Places365) from disk
through `resources.folders`. Images reach the model in batches: a torch DataLoader decodes and
preprocesses in worker processes while the model runs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource

from cliplab.errors import CliplabError
from resources.folders import check_images, scan_folder
from resources.images import MAX_PIXELS, decode_image
from resources.objectstore import cache_folder, cached_copy, is_remote
from resources.registry import DatasetSpec, load_registry, validate_key

if TYPE_CHECKING:
    import torch

TOYWORLD_ASSET = "toyworld"
MASK_FORMATS = ("binary", "imagenet-s")
MANIFEST_COLUMNS = {"image_id": pl.String, "path": pl.String, "toy_index": pl.Int64, "label": pl.Int64, "class_name": pl.String}


TOYWORLD_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("toy_index", pa.int64()), ("split", pa.string()), ("label", pa.int64()),
    ("class_name", pa.string()), ("caption", pa.string()), ("attributes", pa.string()),
    ("height", pa.int32()), ("width", pa.int32()), ("image_png", pa.binary()), ("part_map", pa.binary()),
])


def toyworld_table(batch, split: str) -> pa.Table:
    """A `cliplab.toy.toyworld.ToyBatch` as an Arrow table: PNG image bytes, raw part-map bytes, ground truth."""
    from PIL import Image

    from cliplab.toy import toyworld

    names = toyworld.class_names()
    pngs = []
    for img in batch.images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
        pngs.append(buf.getvalue())
    n, h, w = batch.part_maps.shape
    return pa.table({
        "image_id": [f"{split}/{i:06d}" for i in batch.indices],
        "toy_index": pa.array(batch.indices, pa.int64()),
        "split": [split] * n,
        "label": pa.array(batch.labels, pa.int64()),
        "class_name": [names[i] for i in batch.labels],
        "caption": batch.captions,
        "attributes": [json.dumps(a, sort_keys=True) for a in batch.attributes],
        "height": pa.array([h] * n, pa.int32()),
        "width": pa.array([w] * n, pa.int32()),
        "image_png": pa.array(pngs, pa.binary()),
        "part_map": pa.array([m.tobytes() for m in batch.part_maps], pa.binary()),
    }, schema=TOYWORLD_SCHEMA)


def decode_images(pngs) -> np.ndarray:
    """Encoded images (n,) of one size → uint8 images (n, H, W, 3)."""
    return np.stack([np.asarray(decode_image(b)) for b in pngs])


def decode_part_maps(table: pa.Table | pl.DataFrame) -> np.ndarray:
    """Part maps (n, H, W) uint8 from a toyworld table's `part_map`, `height`, `width` columns."""
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    h, w = int(df["height"][0]), int(df["width"][0])
    return np.frombuffer(b"".join(df["part_map"].to_list()), np.uint8).reshape(len(df), h, w)


@dataclass
class DatasetView:
    """What a dataset partition is: its classes, templates and manifest (one row per usable image,
    sorted by label then image_id, so every per-class step reads a contiguous run of rows)."""

    key: str
    spec: DatasetSpec
    class_names: list[str]
    templates: list[str]
    manifest: pl.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file relative to the root, reason)
    split: str = ""  # toyworld: which split's images the manifest rows index


class _Images:
    """torch Dataset over manifest rows: decodes and preprocesses one image (runs in DataLoader workers)."""

    def __init__(self, rows: list[dict], preprocess, png_by_index: dict[int, bytes] | None, max_pixels: int):
        self.rows, self.preprocess, self.png, self.max_pixels = rows, preprocess, png_by_index, max_pixels

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        source = self.png[row["toy_index"]] if self.png is not None else row["path"]
        return i, self.preprocess(decode_image(source, self.max_pixels))


class DatasetCatalog(ConfigurableResource):
    """Opens datasets by key. `on_corrupt`: "skip" (drop and list corrupt images) or "fail"; `max_image_pixels`:
    images larger than this are decoded reduced (`resources.images`)."""

    registry: str = "registry.toml"
    artifacts_root: str = "./artifacts"
    on_corrupt: str = "skip"
    allow_empty_classes: bool = False
    num_workers: int = 0
    max_image_pixels: int = MAX_PIXELS

    def spec(self, key: str) -> DatasetSpec:
        return load_registry(self.registry, {}).dataset(key)  # only its own entry must be valid

    def known_keys(self, problems: dict[str, str] | None = None) -> list[str]:
        """Registry datasets (toyworld included); with `problems`, invalid entries are recorded there, not raised."""
        return sorted(load_registry(self.registry, problems).datasets)

    def toyworld_path(self, split: str) -> Path:
        """The local Parquet file of toyworld's `split`; on an object-store root, a current copy of it in the root's
        local cache (absent when the store has none), since images are decoded from local files."""
        rel = (TOYWORLD_ASSET, f"split={validate_key(split, 'split')}", "part-0.parquet")
        if is_remote(self.artifacts_root):
            return cached_copy("/".join([self.artifacts_root.rstrip("/"), *rel]), cache_folder(self.artifacts_root).joinpath(*rel))
        return Path(self.artifacts_root).joinpath(*rel)

    def _scan(self, spec: DatasetSpec):
        """The folder layout of a folder dataset (paths, labels, class names); no image is read."""
        return scan_folder(spec.root, spec.kind, split=spec.split or None, synsets=spec.synsets or None,
                           allow_empty_classes=self.allow_empty_classes or spec.options.get("allow_empty_classes", False),
                           follow_symlinks=spec.options.get("follow_symlinks", False))

    def class_names(self, key: str) -> list[str]:
        """The dataset's class names in label order, from its folder layout alone (no image is read)."""
        from cliplab.toy import toyworld

        spec = self.spec(key)
        if spec.kind == "toyworld":
            return list(toyworld.class_names())
        return list(self._scan(spec).class_names)

    def open(self, key: str, on_corrupt: str | None = None, manifest: pl.DataFrame | None = None) -> DatasetView:
        """The dataset's view: its folder scanned and every image decoded once to find the unusable ones
        (`on_corrupt` overrides the resource's setting), or — given the `manifest` the dataset_manifest asset
        stored — that manifest's rows, with no image read."""
        on_corrupt = on_corrupt or self.on_corrupt
        if on_corrupt not in ("skip", "fail"):
            raise CliplabError(f"on_corrupt must be 'skip' or 'fail', not {on_corrupt!r}")
        spec = self.spec(key)
        if spec.kind == "toyworld":
            view = self._open_toyworld(spec)
            return view if manifest is None else DatasetView(key, spec, view.class_names, view.templates,
                                                             manifest.cast(MANIFEST_COLUMNS), split=view.split)
        folder = self._scan(spec)
        if manifest is not None:
            return DatasetView(key, spec, list(folder.class_names), list(folder.templates), manifest.cast(MANIFEST_COLUMNS))
        corrupt = check_images(folder.paths, workers=max(1, self.num_workers or 2), max_pixels=self.max_image_pixels)
        if corrupt and on_corrupt == "fail":
            listed = "; ".join(f"{p}: {why}" for p, why in corrupt[:5])
            raise CliplabError(f"dataset {key!r}: {len(corrupt)} corrupt image(s): {listed}")
        bad = {p for p, _ in corrupt}
        manifest = pl.DataFrame(
            {
                "image_id": list(folder.image_ids),
                "path": list(folder.paths),
                "toy_index": [None] * len(folder.paths),
                "label": list(folder.labels),
                "class_name": [folder.class_names[i] for i in folder.labels],
            },
            schema=MANIFEST_COLUMNS,
        ).filter(~pl.col("path").is_in(list(bad))).sort("label", "image_id")
        rel = {p: i for p, i in zip(folder.paths, folder.image_ids)}
        skipped = sorted([*folder.skipped, *((rel[p], f"cannot decode: {why}") for p, why in corrupt)])
        return DatasetView(key, spec, list(folder.class_names), list(folder.templates), manifest, skipped)

    def open_training(self, key: str) -> DatasetView:
        """The images a model is fine-tuned on: toyworld's train split; a folder dataset as registered."""
        spec = self.spec(key)
        view = self._open_toyworld(spec, split="train") if spec.kind == "toyworld" else self.open(key)
        if view.manifest.is_empty():
            raise CliplabError(f"dataset {key!r} has no usable images to train on")
        return view

    def captions(self, view: DatasetView) -> list[str] | None:
        """The caption of every manifest row (toyworld), or None for datasets without captions."""
        if view.spec.kind != "toyworld":
            return None
        table = pl.read_parquet(self.toyworld_path(view.split), columns=["toy_index", "caption"])
        return view.manifest.select("toy_index").join(table, on="toy_index", how="left", maintain_order="left")["caption"].to_list()

    def _open_toyworld(self, spec: DatasetSpec, split: str | None = None) -> DatasetView:
        from cliplab.toy import toyworld

        split = split or spec.split or "val"
        path = self.toyworld_path(split)
        if not path.is_file():
            raise CliplabError(f"dataset {spec.key!r}: toyworld split {split!r} not found at {path}; materialise the toyworld asset first")
        table = pl.read_parquet(path, columns=["image_id", "toy_index", "label", "class_name"])
        manifest = (table.with_columns(pl.lit(None, pl.String).alias("path")).select(list(MANIFEST_COLUMNS))
                    .cast(MANIFEST_COLUMNS).sort("label", "image_id"))
        return DatasetView(spec.key, spec, toyworld.class_names(), list(toyworld.TEMPLATES), manifest, split=split)

    def part_maps(self, key: str) -> tuple[list[str], np.ndarray] | None:
        """(image ids, part maps (n, H, W) uint8) of a toyworld dataset; None for datasets without ground truth."""
        spec = self.spec(key)
        if spec.kind != "toyworld":
            return None
        df = pl.read_parquet(self.toyworld_path(spec.split or "val"), columns=["image_id", "part_map", "height", "width"])
        return df["image_id"].to_list(), decode_part_maps(df)

    def masks(self, key: str, geometry) -> "Callable[[list[str]], np.ndarray] | None":
        """image ids → (B, H, W) bool object masks at the model's input geometry, or None for a dataset without masks.

        `geometry`: PIL mask → PIL mask, the model's resize/crop with nearest resampling (`cliplab.pixels.mask_transform`).
        toyworld: part map > 0. Folder datasets: the entry's `masks` folder, else a `masks/` folder beside the image
        folder, holding one PNG per image at the image's relative path (extension .png); `mask_format` = "binary"
        (non-zero = object) or "imagenet-s" (ImageNet-S: class id R + 256·G, 0 = background, 1000 = ignored, counted
        as background). An image without a mask file gets an empty mask (the metrics skip and count it).
        """
        from PIL import Image

        spec = self.spec(key)
        if spec.kind == "toyworld":
            ids, maps = self.part_maps(key)
            index = {i: n for n, i in enumerate(ids)}

            def toy(image_ids):
                return np.stack([np.asarray(geometry(Image.fromarray(maps[index[i]]))) > 0 for i in image_ids])

            return toy
        folder = Path(spec.options["masks"]) if spec.options.get("masks") else Path(spec.root).parent / "masks"
        fmt = spec.options.get("mask_format", "binary")
        if fmt not in MASK_FORMATS:
            raise CliplabError(f"dataset {key!r}: mask_format must be one of {MASK_FORMATS}, not {fmt!r}")
        if not folder.is_dir():
            if spec.options.get("masks"):
                raise CliplabError(f"dataset {key!r}: masks folder {folder} does not exist")
            return None
        root = Path(spec.root)

        def load(image_id):
            path = folder / Path(image_id).with_suffix(".png")
            if not path.is_file():
                return None
            with Image.open(path) as m:
                a = np.asarray(geometry(m.convert("RGB") if fmt == "imagenet-s" else m.convert("L")))
            if fmt == "imagenet-s":
                ids = a[..., 0].astype(np.int32) + 256 * a[..., 1].astype(np.int32)
                return (ids > 0) & (ids != 1000)
            return a > 0

        def folder_masks(image_ids):
            got = [load(i) for i in image_ids]
            shape = next((g.shape for g in got if g is not None), None)
            if shape is None:  # no mask for any of them: the shape comes from an image
                with Image.open(root / image_ids[0]) as im:
                    shape = np.asarray(geometry(im.convert("L"))).shape
            return np.stack([g if g is not None else np.zeros(shape, bool) for g in got])

        return folder_masks

    def image_batches(self, view: DatasetView, preprocess, batch_size: int = 64) -> Iterator[tuple[pl.DataFrame, "torch.Tensor"]]:
        """(manifest rows, images (B, 3, H, W)) in manifest order; decoding runs in `num_workers` processes."""
        for idx, images in self._loader(view, preprocess, batch_size=batch_size, shuffle=False):
            yield view.manifest[idx.tolist()], images

    def planned_batches(self, view: DatasetView, preprocess, plan: Iterable[list[int]]) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        """(manifest row indices (B,), images (B, 3, H, W)) for each index list of `plan`, in order (training)."""
        yield from self._loader(view, preprocess, batch_sampler=plan)

    def _loader(self, view: DatasetView, preprocess, **batching):
        import torch

        png = None
        if view.spec.kind == "toyworld":
            tbl = pq.read_table(self.toyworld_path(view.split or view.spec.split or "val"), columns=["toy_index", "image_png"])
            png = dict(zip(tbl.column("toy_index").to_pylist(), tbl.column("image_png").to_pylist()))
        images = _Images(view.manifest.to_dicts(), preprocess, png, self.max_image_pixels)
        return torch.utils.data.DataLoader(images, num_workers=self.num_workers, persistent_workers=False, **batching)

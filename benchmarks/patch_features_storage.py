"""patch_features on disk: bytes per image in float32 and float16 storage, and the projected size for ImageNet-val.
Prints a table; not a test.

    python benchmarks/patch_features_storage.py [--images 8] [--archs ViT-B-16 ViT-L-14] [--root ARTIFACTS]

Per architecture (random-init open_clip weights, loaded offline, at its own input size: 224 px for ViT-B/16 and
ViT-L/14), `cliplab.features.patch_features` of `--images` toyworld val images (resized to the input size) is
written exactly as the asset writes it (`features_schema`, `vectors`, Parquet zstd) once per storage dtype; bytes
per image = file size / images, projected × 50,000 (ImageNet-val). The schema's raw size (2 · N · C values per image
for tokens and keys, plus cls and embedding) is printed beside it. With --root, the stored patch_features partitions
under that artifact root are measured too (e.g. the trained toy on toyworld).
"""

import argparse
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

IMAGENET_VAL = 50_000


def encode(arch: str, n: int):
    """PatchFeatures of n toyworld images for a random-init open_clip architecture (or "toy-vit")."""
    import numpy as np
    import torch

    from cliplab.features import patch_features
    from cliplab.toy import toyworld
    from resources.models import as_weights, build_architecture

    torch.manual_seed(0)
    model, _, _ = build_architecture(arch)
    w = as_weights(model, arch)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = toyworld.generate(0, "val", n).images.astype(np.float32) / 255
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(w.mean).view(1, 3, 1, 1), torch.tensor(w.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return patch_features(model.eval(), (x - mean) / std)


def parquet_bytes(f, dtype) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from assets._arrow import vectors
    from assets.encodings import features_schema

    n, c = f.tokens.shape[1:]
    schema = features_schema(n, c, f.embedding.shape[1], f.grid, dtype)
    b = len(f.tokens)
    table = pa.table({"image_id": [f"i{i}" for i in range(b)], "label": np.zeros(b, np.int64),
                      "tokens": vectors(f.tokens.numpy().astype(dtype), dtype=dtype),
                      "keys": vectors(f.keys.numpy().astype(dtype), dtype=dtype),
                      "cls": vectors(f.cls.numpy()), "embedding": vectors(f.embedding.numpy())}, schema=schema)
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, schema, compression="zstd") as w:  # as ArtifactStore.writer
        w.write_table(table)
    return sink.tell()


def main() -> None:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--archs", nargs="+", default=["toy-vit", "ViT-B-16", "ViT-L-14"])
    p.add_argument("--root", help="an artifact root whose stored patch_features partitions to measure too")
    args = p.parse_args()
    print(f"{'architecture':12} {'grid':>6} {'N x C':>11} {'raw f32 KB':>10} {'f32 KB/img':>10} {'f16 KB/img':>10} "
          f"{'f16/f32':>7} {'ImageNet-val f32 GB':>19} {'f16 GB':>7}")
    for arch in args.archs:
        f = encode(arch, args.images)
        n, c = f.tokens.shape[1:]
        raw = (2 * n * c + c + f.embedding.shape[1]) * 4
        per = {dt: parquet_bytes(f, dt) / args.images for dt in (np.float32, np.float16)}
        print(f"{arch:12} {f.grid[0]:>3}x{f.grid[1]:<2} {n:>5} x {c:<4} {raw / 1e3:10.1f} {per[np.float32] / 1e3:10.1f} "
              f"{per[np.float16] / 1e3:10.1f} {per[np.float16] / per[np.float32]:7.3f} "
              f"{per[np.float32] * IMAGENET_VAL / 1e9:19.1f} {per[np.float16] * IMAGENET_VAL / 1e9:7.1f}", flush=True)
    if args.root:
        import pyarrow.parquet as pq

        for path in sorted(Path(args.root).glob("patch_features/model=*/dataset=*/*.parquet")):
            meta = pq.ParquetFile(path).metadata
            kind = pq.read_schema(path).field("tokens").type.value_type
            print(f"stored {path.parent.parent.name}/{path.parent.name}: {meta.num_rows} images, {kind}, "
                  f"{path.stat().st_size / meta.num_rows / 1e3:.1f} KB/image")


if __name__ == "__main__":
    main()

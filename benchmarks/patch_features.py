"""patch_features throughput and memory. Prints a table; not a test.

    python benchmarks/patch_features.py [--sizes 2000 8000] [--vit-b16-images 64]

1. The real `patch_features` asset (Dagster, Parquet row groups) for the toy model on toyworld val sets
   of each size, each in a fresh process: images/s from the asset's metadata, peak RSS from wait4.
2. `cliplab.features.patch_features` on random-init open_clip ViT-B/16 at 224 px (batched forward).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _child import TOY_PARTITION, prepare_root, run_child  # noqa: E402

CHILD = TOY_PARTITION + """
from assets import data, encodings
r = materialize([data.dataset_manifest, data.class_text_embeddings, encodings.image_encodings], instance=inst,
                partition_key=key, resources=res, run_config={"ops": {"image_encodings": {"config": {"batch_size": 128}}}})
meta = {m.asset_key.path[-1]: m.metadata for m in r.asset_materializations_for_node("image_encodings")}["patch_features"]
print(json.dumps({"images/s": meta["images/s"].value, "images": meta["images"].value}))
"""


def vit_b16(n_images: int, batch: int, device: str) -> float:
    import open_clip
    import torch

    from cliplab.features import patch_features

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        patch_features(model, x[:2])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        done = 0
        while done < n_images:
            f = patch_features(model, x)
            f.tokens.cpu()
            done += batch
        if device == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--vit-b16-images", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    rows = []
    for n in args.sizes:
        root = prepare_root(n)
        result, rss = run_child(CHILD, str(root), args.device)
        rows.append((f"toy-vit.s0 × toyworld ({n} images), asset", args.device, result["images/s"], rss))
    batch = 32 if args.device == "cpu" else 256
    rows.append((f"ViT-B/16 random init, 224 px, batch {batch}, function", args.device,
                 vit_b16(args.vit_b16_images, batch, args.device), float("nan")))
    print(f"\n{'what':58} {'device':7} {'images/s':>10} {'peak RSS MiB':>13}")
    for what, dev, ips, rss in rows:
        print(f"{what:58} {dev:7} {ips:10.1f} {rss:13.0f}")
    if len(args.sizes) >= 2:
        first, last = rows[0][3], rows[len(args.sizes) - 1][3]
        print(f"\npeak RSS {args.sizes[-1]} vs {args.sizes[0]} images: {last / first:.3f}× (bounded memory: ≤ 1.25×)")


if __name__ == "__main__":
    main()

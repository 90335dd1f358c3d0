"""patch_features throughput and memory. Prints a table; not a test.

    python benchmarks/patch_features.py [--sizes 2000 8000] [--vit-b16-images 64]

1. The real `patch_features` asset (Dagster, Parquet row groups) for the toy model on toyworld val sets
   of each size, each in a fresh process: images/s from the asset's metadata, peak RSS from wait4.
2. `cliplab.features.patch_features` on random-init open_clip ViT-B/16 at 224 px (batched forward).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = """
import json, sys
from dagster import DagsterInstance, materialize
from assets import data, encodings
from assets.partitions import partition_key
from pipelines.definitions import resources_from_env
from resources.models import ModelZoo
root = sys.argv[1]
inst = DagsterInstance.ephemeral()
inst.add_dynamic_partitions("model", ["toy-vit.s0"]); inst.add_dynamic_partitions("dataset", ["toyworld"])
res = resources_from_env(root)
res["zoo"] = ModelZoo(artifacts_root=root, device=sys.argv[2])
r = materialize([data.dataset_manifest, data.class_text_embeddings, encodings.image_encodings], instance=inst,
                partition_key=partition_key("toy-vit.s0", "toyworld"), resources=res,
                run_config={"ops": {"image_encodings": {"config": {"batch_size": 128}}}})
meta = {m.asset_key.path[-1]: m.metadata for m in r.asset_materializations_for_node("image_encodings")}["patch_features"]
print(json.dumps({"images/s": meta["images/s"].value, "images": meta["images"].value}))
"""


def prepare_root(n: int) -> Path:
    """An artifact root with toyworld (n val images) and a toy CLIP checkpoint (random init: speed does not depend on weights)."""
    import pyarrow.parquet  # noqa: F401  (imported before torch: keeps the parent light)

    from cliplab.toy import toyworld
    from cliplab.toy.clip import build_toy_clip
    from resources.datasets import TOYWORLD_SCHEMA, toyworld_table
    from resources.models import as_weights, save_checkpoint
    from resources.store import ArtifactStore

    root = Path(tempfile.mkdtemp(prefix=f"cliplab-bench-{n}-")) / "artifacts"
    store = ArtifactStore(root=str(root))
    with store.writer("toyworld", TOYWORLD_SCHEMA, split="val") as w:
        for start in range(0, n, 1000):
            w.write_table(toyworld_table(toyworld.generate(0, "val", min(1000, n - start), start=start), "val"))
    import torch

    torch.manual_seed(0)
    save_checkpoint(as_weights(build_toy_clip(), "toy-vit"), root / "checkpoints" / "toy-vit.s0")
    return root


def run_child(root: Path, device: str) -> tuple[dict, float]:
    """Materialise image_encodings in a fresh process; (its result, its peak RSS in MiB)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), device], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"benchmark child failed (status {status})")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


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
        result, rss = run_child(root, args.device)
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

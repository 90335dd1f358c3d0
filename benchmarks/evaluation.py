"""The evaluation suite's heavy steps: saliency maps (all three methods) and APGD-CE. Prints a table; not a test.

    python benchmarks/evaluation.py [--sizes 2000 8000] [--device cpu|cuda]

1. The real `saliency_maps` asset (Dagster, float16 Parquet row groups) for the toy model on toyworld val sets of
   each size, each in a fresh process: images/s (three methods per image) from its metadata, peak RSS from wait4;
   memory must not grow with the dataset (8k vs 2k ≤ 1.25×).
2. `SALIENCY_METHODS` on a batch of random-init open_clip ViT-B/16 at 224 px (function level).
3. APGD-CE (`cliplab.evaluation.apgd.apgd_ce`, 100 iterations; 10 for ViT-B/16 on a CPU) on the toy model and on
   ViT-B/16: every image is attacked (labels = the clean prediction), so the time is the attack's full cost.
Random weights: speed does not depend on them. CUDA rows run in bf16 autocast for the maps, float32 for APGD.
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
from assets import data
from assets.evaluation import saliency
r = materialize([data.dataset_manifest, data.class_text_embeddings, saliency.saliency_maps], instance=inst,
                partition_key=key, resources=res, run_config={"ops": {"saliency_maps": {"config": {"batch_size": 64}}}})
meta = r.asset_materializations_for_node("saliency_maps")[0].metadata
print(json.dumps({"images/s": meta["images/s"].value, "images": meta["images"].value}))
"""


def _encoder(arch: str, device: str):
    import torch

    from cliplab.pixels import PixelEncoder
    from cliplab.toy.clip import MEAN, STD, build_toy_clip

    torch.manual_seed(0)
    if arch == "toy-vit":
        model = build_toy_clip()
    else:
        import open_clip

        model = open_clip.create_model(arch, pretrained=None)
    visual = model.visual.to(device).eval()
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    return PixelEncoder(visual, MEAN, STD).to(device), size


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def saliency_function(arch: str, batch: int, device: str) -> float:
    """images/s of the three methods together on one batch (after a warm-up batch)."""
    import torch
    import torch.nn.functional as F

    from cliplab.evaluation.saliency import SALIENCY_METHODS

    encoder, size = _encoder(arch, device)
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        text = F.normalize(torch.randn_like(encoder(x[:1]).float()).expand(batch, -1), dim=-1).contiguous()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    with autocast:
        for fn in SALIENCY_METHODS.values():
            fn(encoder, x[:2], text[:2])
        _sync(device)
        t0 = time.perf_counter()
        for fn in SALIENCY_METHODS.values():
            fn(encoder, x, text)
        _sync(device)
    return batch / (time.perf_counter() - t0)


def apgd_function(arch: str, batch: int, n_iter: int, device: str) -> float:
    """images/s of APGD-CE with `n_iter` iterations, every image attacked."""
    import torch
    import torch.nn.functional as F

    from cliplab.evaluation.apgd import apgd_ce

    encoder, size = _encoder(arch, device)
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        w = F.normalize(torch.randn(10, encoder(x[:1]).shape[-1], device=device), dim=-1)

    def logits(p):
        return 100 * F.normalize(encoder(p).float(), dim=-1) @ w.T

    with torch.no_grad():
        y = logits(x).argmax(dim=1)  # every point starts correct: the attack runs on all of them
    _sync(device)
    t0 = time.perf_counter()
    apgd_ce(logits, x, y, 4 / 255, seed=0, n_iter=n_iter)
    _sync(device)
    return batch / (time.perf_counter() - t0)


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    cpu = args.device == "cpu"
    rows = []
    for n in args.sizes:
        result, rss = run_child(CHILD, str(prepare_root(n)), args.device)
        rows.append((f"saliency_maps asset, 3 methods, toy × toyworld ({n} images)", result["images/s"], rss))
    rows.append(("3 saliency methods, ViT-B/16 224 px, batch " + ("8" if cpu else "128"),
                 saliency_function("ViT-B-16", 8 if cpu else 128, args.device), float("nan")))
    rows.append(("APGD-CE, 100 iterations, toy, batch 64", apgd_function("toy-vit", 64, 100, args.device), float("nan")))
    vit_iter = 10 if cpu else 100
    rows.append((f"APGD-CE, {vit_iter} iterations, ViT-B/16 224 px, batch " + ("4" if cpu else "64"),
                 apgd_function("ViT-B-16", 4 if cpu else 64, vit_iter, args.device), float("nan")))
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}")
    print(f"{'what':66} {'images/s':>10} {'peak RSS MiB':>13}")
    for what, ips, rss in rows:
        print(f"{what:66} {ips:10.2f} {rss:13.0f}")
    if len(args.sizes) >= 2:
        first, last = rows[0][2], rows[len(args.sizes) - 1][2]
        print(f"\npeak RSS of saliency_maps, {args.sizes[-1]} vs {args.sizes[0]} images: {last / first:.3f}× (bounded: ≤ 1.25×)")


if __name__ == "__main__":
    main()

"""Throughput of the mutual-knowledge chain, patch_features → mi_curves. Prints a table; not a test.

    python benchmarks/mutual_knowledge.py --root artifacts            # after `cliplab run` (trained toy CLIP)
    python benchmarks/mutual_knowledge.py --arch ViT-B-16 --images 256  # random-init ViT-B/16 at 224 px (GPU)

Each asset of the chain (prominent_patches, concept_clusters, descriptor_embeddings, class_descriptors,
visual_concept_descriptors, mi_curves) is materialised for real, in one fresh process, on a root
that already holds patch_features; the table gives seconds per asset and images/s of the whole chain.
With --arch, a random-init open_clip architecture is saved as a checkpoint folder, registered as model
`<arch>.random`, and the encodings are computed first (not counted in the chain's time).
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHAIN = ("prominent_patches", "concept_clusters", "descriptor_embeddings", "class_descriptors",
         "visual_concept_descriptors", "mi_curves")


def _assets():
    from assets import data, encodings
    from assets.mutual import concepts, descriptors
    from assets.mutual import knowledge as mutual

    return {"prominent_patches": concepts.prominent_patches, "concept_clusters": concepts.concept_clusters,
            "descriptor_embeddings": descriptors.descriptor_embeddings, "class_descriptors": descriptors.class_descriptors,
            "visual_concept_descriptors": mutual.visual_concept_descriptors, "mi_curves": mutual.mi_curves,
            "dataset_manifest": data.dataset_manifest, "class_text_embeddings": data.class_text_embeddings,
            "image_encodings": encodings.image_encodings}


def random_model(root: Path, arch: str, images: int) -> str:
    """Save random-init `arch` as a pipeline checkpoint folder and limit toyworld val to `images`."""
    import open_clip
    import polars as pl
    import torch

    from resources.models import as_weights, save_checkpoint

    torch.manual_seed(0)
    key = f"{arch.lower()}.random"
    model = open_clip.create_model(arch, pretrained=None)
    save_checkpoint(as_weights(model, arch), root / "checkpoints" / key, extra={"random_init": True})
    val = root / "toyworld" / "split=val" / "part-0.parquet"
    pl.read_parquet(val).head(images).write_parquet(val)
    return key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="artifacts", help="artifact root with toyworld and the trained toy CLIP (cliplab run)")
    p.add_argument("--arch", default="", help="open_clip architecture to run with random weights instead of the toy CLIP")
    p.add_argument("--images", type=int, default=256, help="toyworld val images for --arch")
    args = p.parse_args()

    from dagster import DagsterInstance, materialize

    from assets.partitions import partition_key
    from pipelines.definitions import resources_from_env

    src = Path(args.root)
    if not (src / "checkpoints" / "toy-vit.s0").is_dir():
        raise SystemExit(f"{src} has no toy CLIP: run `cliplab run` first (or pass --root)")
    work = Path(tempfile.mkdtemp(prefix="cliplab-mk-bench-")) / "artifacts"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("lancedb", "_figures", ".staging"))
    model = random_model(work, args.arch, args.images) if args.arch else "toy-vit.s0"
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", [model])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    resources = resources_from_env(str(work))
    key = partition_key(model, "toyworld")
    assets = _assets()
    setup = ["dataset_manifest", "class_text_embeddings"] + (["image_encodings"] if args.arch else [])
    for name in setup:
        assert materialize([assets[name]], resources=resources, instance=instance, partition_key=key).success
    n_images = resources["datasets"].open("toyworld").manifest.height
    rows = []
    for name in CHAIN:
        t0 = time.perf_counter()
        assert materialize([assets[name]], resources=resources, instance=instance, partition_key=key).success
        rows.append((name, time.perf_counter() - t0))
    total = sum(s for _, s in rows)
    import torch

    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nmutual-knowledge chain, {model} × toyworld, {n_images} images, {device}\n")
    print(f"| {'asset':28} | {'seconds':>8} | {'images/s':>9} |")
    print(f"|{'-' * 30}|{'-' * 10}|{'-' * 11}|")
    for name, s in rows:
        print(f"| {name:28} | {s:8.1f} | {n_images / s:9.1f} |")
    print(f"| {'whole chain':28} | {total:8.1f} | {n_images / total:9.1f} |")
    shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    main()

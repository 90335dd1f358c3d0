"""`cliplab heads ...`: the five CLIP-InterpreT analyses on a materialised (model, dataset) partition.

    cliplab heads segment   --image-id val/000003 --layer 3 --head 1 --text "something red" --text "a dotted pattern" --out seg.png
    cliplab heads contrast  --image cat.jpg --text-a "a cat" --text-b "a dog" [--heads 11.3,11.4] --out c.png
    cliplab heads image-nn  --image-id val/000003 --layer 3 --head 1 [--k 8] --out nn.png
    cliplab heads text-nn   --text "something red" --layer 3 --head 1 [--k 8] --out nn.png
    cliplab heads property-nn --image-id val/000003 (--property colour | --heads 3.1,3.2) [--k 4] --out nn.png

Each prints its polars frame and, with --out, writes the PNG. The nearest-neighbour analyses read the
`heads` job's LanceDB tables of the partition; the maps are computed from the checkpoint and the image.
"""

import argparse
import sys
from pathlib import Path

COMMANDS = ("segment", "contrast", "image-nn", "text-nn", "property-nn")


def add_parser(sub) -> None:
    """Register `heads` and its subcommands on the main parser's subparsers."""
    from resources.registry import TOY_MODEL_KEY, TOYWORLD_KEY

    h = sub.add_parser("heads", help="CLIP-InterpreT analyses of attention heads (maps and nearest neighbours)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hs = h.add_subparsers(dest="analysis", required=True)

    def common(p, image: bool = True, head: bool = True):
        p.add_argument("--model", default=TOY_MODEL_KEY)
        p.add_argument("--dataset", default=TOYWORLD_KEY)
        p.add_argument("--out", type=Path, default=None, help="write the figure (PNG) here")
        if image:
            g = p.add_mutually_exclusive_group(required=True)
            g.add_argument("--image", help="an image file")
            g.add_argument("--image-id", help="a stored image of the dataset (image_id of dataset_manifest)")
        if head:
            p.add_argument("--layer", type=int, required=True)
            p.add_argument("--head", type=int, required=True)
        p.set_defaults(fn=run)
        return p

    s = common(hs.add_parser("segment", help="topic segmentation: one head's map per text (mean over texts subtracted)"))
    s.add_argument("--text", action="append", default=None,
                   help="a text to map (repeat); default: the head's top-5 TextSpan texts from head_spans")
    c = common(hs.add_parser("contrast", help="contrastive segmentation: map(text a) − map(text b), summed over heads"),
               head=False)
    c.add_argument("--text-a", required=True)
    c.add_argument("--text-b", required=True)
    c.add_argument("--heads", default=None, help="layer.head list, e.g. 11.3,11.4 (default: all heads of the last 4 layers)")
    i = common(hs.add_parser("image-nn", help="nearest stored images of an image through one head (dot product)"))
    i.add_argument("--k", type=int, default=8)
    t = common(hs.add_parser("text-nn", help="stored images whose head contribution best matches a text"), image=False)
    t.add_argument("--text", required=True)
    t.add_argument("--k", type=int, default=8)
    p = common(hs.add_parser("property-nn", help="nearest stored images through all heads of one property (cosine)"),
               head=False)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--property", help="a head label of head_labels (e.g. colour)")
    g.add_argument("--heads", help="layer.head list instead of a property")
    p.add_argument("--k", type=int, default=4)


def run(args) -> int:
    import polars as pl

    from assets.heads.maps import HeadAnalyses
    from cliplab.errors import CliplabError
    from cliplab.heads.neighbours import parse_heads
    from pipelines.definitions import resources_from_env
    from resources.registry import validate_key

    validate_key(args.model, "model key"), validate_key(args.dataset, "dataset key")
    res = resources_from_env(args.artifacts)  # one place reads CLIPLAB_* (device, registry, resize mode, ...)
    res["zoo"].spec(args.model), res["datasets"].spec(args.dataset)  # unknown keys: the registry's error
    an = HeadAnalyses(res["zoo"], res["datasets"], res["lance"], res["store"], args.model, args.dataset)
    heads = parse_heads(args.heads) if getattr(args, "heads", None) else None
    if getattr(args, "k", 1) < 1:
        raise CliplabError(f"--k must be ≥ 1; got {args.k}")
    if args.analysis == "text-nn":
        frame, png = an.text_neighbours(args.text, args.layer, args.head, args.k)
    else:
        image = an.image(args.image, args.image_id)
        if args.analysis == "segment":
            frame, png = an.topic_segmentation(image, args.layer, args.head, args.text)
        elif args.analysis == "contrast":
            frame, png = an.contrastive_segmentation(image, args.text_a, args.text_b, heads)
        elif args.analysis == "image-nn":
            frame, png = an.image_neighbours(image, args.layer, args.head, args.k)
        else:
            frame, png = an.property_neighbours(image, args.property, heads, args.k)
    with pl.Config(tbl_rows=50, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60):
        print(frame)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(png)
        print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    from pipelines.cli import main

    sys.exit(main(["heads", *sys.argv[1:]]))

"""`cliplab explore`: serve the explorer page over the artifact root (no Dagster run needed)."""

from __future__ import annotations

import sys

WARNING = ("cliplab explore: WARNING: serving on {host}, reachable from other machines; the page has no "
           "authentication, reads every artifact under {root} and runs models on uploaded files")


def add_parser(sub) -> None:
    e = sub.add_parser("explore", help="a web page to look at one image at a time: concepts, heads, saliency, models side by side")
    e.add_argument("--port", type=int, default=8765)
    e.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only); 0.0.0.0 exposes the page, "
                        "which has no authentication, to the network")
    e.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: one image at a time gains little from more, and a busy CPU "
                        "loses much: toy saliency 0.36 s with 1 thread, 8 s with 2 on a loaded 2-core machine)")
    e.set_defaults(fn=run)


def run(args) -> int:
    import uvicorn

    from cliplab.errors import CliplabError
    from pipelines.explorer.app import create_app
    from pipelines.explorer.core import Explorer

    if not 0 < args.port < 65536:
        raise CliplabError(f"--port must be in 1..65535, got {args.port}")
    if args.threads < 1:
        raise CliplabError(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    explorer = Explorer(args.artifacts)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(WARNING.format(host=args.host, root=explorer.root), file=sys.stderr)
    parts = explorer.partitions()
    print(f"cliplab: explorer on http://{args.host}:{args.port}/ over {explorer.root} "
          f"({len(parts)} materialised partitions: {', '.join(f'{d}|{m}' for m, d in parts) or 'none'})", flush=True)
    uvicorn.run(create_app(explorer), host=args.host, port=args.port, log_level="warning")
    return 0

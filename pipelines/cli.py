"""`cliplab`: run the default graph, query artifacts, open the UI, list models and datasets.

    cliplab run                      # toyworld + toy CLIP + every partitioned asset for toy-vit.s0 × toyworld
    cliplab run --model toy-vit.s0.aft-e4   # the toy CLIP adversarially fine-tuned (ε = 4/255), then every analysis
    cliplab run --model vit-b-32.openai --dataset imagenet-val
    cliplab query zero_shot_predictions --model toy-vit.s0 --limit 5
    cliplab ui                       # dagster dev -w workspace.yaml (DAGSTER_HOME=./.dagster_home)
    cliplab heads segment --image-id val/000003 --layer 3 --head 1 --text "something red" --out seg.png
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cmd_run(args) -> int:
    from dagster import DagsterInstance

    from cliplab.errors import CliplabError
    from pipelines.definitions import resources_from_env
    from pipelines.runs import materialise

    for flag in ("steps", "n_train", "n_val"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise CliplabError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    resources = resources_from_env(args.artifacts)
    if args.steps is not None and resources["zoo"].spec(args.model).kind not in ("toy", "aft"):
        raise CliplabError(f"--steps sets training steps of a toy or aft model; {args.model!r} is "
                           f"{resources['zoo'].spec(args.model).kind!r}")
    sizes = {k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val)) if v is not None}
    outcome = materialise(DagsterInstance.get(), args.model, args.dataset, resources, retrain=args.retrain,
                          steps={args.model: args.steps} if args.steps is not None else None,
                          toyworld=sizes or None, log=lambda s: print(f"cliplab: {s}"))
    root = resources["store"].uri()
    failed = outcome.failure()
    if failed is not None:
        failure = next((e for e in failed.all_events if e.is_step_failure), None)
        msg = root_cause(failure.step_failure_data.error) if failure else "see the run's logs"
        print(f"\ncliplab: run {failed.run_id} FAILED: {msg}", file=sys.stderr)
        return 1
    runs = ", ".join(r.run_id[:8] for r in outcome.results)
    print(f"\ncliplab: runs {runs} succeeded for model={args.model} dataset={args.dataset}")
    print(f"  artifacts: {root}  (Parquet, hive layout: <asset>/model=<m>/dataset=<d>/part-0.parquet)")
    print(f"  LanceDB:   {root}/lancedb")
    print(f"  weights:   {root}/checkpoints/<model>/ (safetensors + open_clip_config.json)")
    print("  query:     cliplab query zero_shot_predictions --limit 5")
    print("  UI:        cliplab ui   (or: DAGSTER_HOME=$PWD/.dagster_home dagster dev -w workspace.yaml)")
    return 0


def root_cause(error) -> str:
    """The innermost error's message: Dagster wraps the asset's own exception in its step error."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def cmd_query(args) -> int:
    import polars as pl

    from pipelines.definitions import resources_from_env

    store = resources_from_env(args.artifacts)["store"]
    lf = store.scan(args.asset)
    if args.model:
        lf = lf.filter(pl.col("model") == args.model)
    if args.dataset:
        lf = lf.filter(pl.col("dataset") == args.dataset)
    wide = [n for n, t in lf.collect_schema().items() if isinstance(t, (pl.Array, pl.List)) and n not in ("top5_class", "top5_index")]
    df = lf.drop(wide if not args.all_columns else []).head(args.limit).collect()
    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, tbl_width_chars=400, fmt_str_lengths=60, fmt_table_cell_list_len=5):
        print(df)
    return 0


def cmd_ui(args) -> int:
    home = os.environ["DAGSTER_HOME"]
    # this interpreter's dagster, so the venv need not be on PATH (`dagster dev` starts its webserver, daemon and
    # code servers with sys.executable too)
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    print(f"cliplab: DAGSTER_HOME={home}; {' '.join(cmd)}")
    os.chdir(REPO)
    os.execv(cmd[0], cmd)


def cmd_list(args) -> int:
    from pipelines.definitions import resources_from_env

    res = resources_from_env(args.artifacts)
    keys = res["zoo"].known_keys() if args.what == "models" else res["datasets"].known_keys()
    print("\n".join(keys))
    return 0


def parser() -> argparse.ArgumentParser:
    from resources.registry import TOY_MODEL_KEY, TOYWORLD_KEY

    p = argparse.ArgumentParser(prog="cliplab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=None, help="artifact root (default $CLIPLAB_ARTIFACTS or ./artifacts)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="materialise the default graph for one (model, dataset) partition")
    r.add_argument("--model", default=TOY_MODEL_KEY)
    r.add_argument("--dataset", default=TOYWORLD_KEY)
    r.add_argument("--steps", type=int, default=None, help="training steps of the model's checkpoint (toy and aft models)")
    r.add_argument("--n-train", type=int, default=None, help="regenerate toyworld with this many train images")
    r.add_argument("--n-val", type=int, default=None, help="regenerate toyworld with this many val images")
    r.add_argument("--retrain", action="store_true",
                   help="re-materialise the model's checkpoint (and toyworld, for the toy model) even if present")
    r.set_defaults(fn=cmd_run)
    q = sub.add_parser("query", help="print rows of a materialised asset (polars)")
    q.add_argument("asset")
    q.add_argument("--model")
    q.add_argument("--dataset")
    q.add_argument("--limit", type=int, default=10)
    q.add_argument("--all-columns", action="store_true", help="include vector columns")
    q.set_defaults(fn=cmd_query)
    u = sub.add_parser("ui", help="open the Dagster UI (dagster dev)")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=cmd_ui)
    for what in ("models", "datasets"):
        sub.add_parser(what, help=f"list registered {what}").set_defaults(fn=cmd_list, what=what)
    from pipelines import heads_cli

    heads_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from cliplab.errors import CliplabError
    from pipelines.environment import prepare_environment

    args = parser().parse_args(argv)
    prepare_environment()
    try:
        return args.fn(args)
    except CliplabError as e:
        print(f"cliplab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

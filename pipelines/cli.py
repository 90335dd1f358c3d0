"""`cliplab`: run the default graph, query artifacts, open the UI, list models and datasets.

    cliplab run                      # toyworld + toy CLIP + every partitioned asset for toy-vit.s0 × toyworld
    cliplab run --model toy-vit.s0.aft-e4   # the toy CLIP adversarially fine-tuned (ε = 4/255), then every analysis
    cliplab run --model vit-b-32.openai --dataset imagenet-val
    cliplab query zero_shot_predictions --model toy-vit.s0 --limit 5
    cliplab ui                       # dagster dev -w workspace.yaml (DAGSTER_HOME=./.dagster_home)
    cliplab heads segment --image-id val/000003 --layer 3 --head 1 --text "something red" --out seg.png
    cliplab explore                  # the explorer page on http://127.0.0.1:8765 (--host 0.0.0.0 exposes it: no auth)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
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
    """The message for a user: the innermost of cliplab's own errors (which name what to fix) when there is one,
    else the innermost error (Dagster wraps the asset's exception in its step error, and cliplab's errors wrap the
    library error they explain)."""
    ours = None
    while True:
        if error.cls_name in ("CliplabError", "DownloadError"):
            ours = error
        if error.cause is None:
            return (ours or error).message.strip()
        error = error.cause


def cmd_query(args) -> int:
    import polars as pl

    from cliplab.errors import CliplabError
    from pipelines.definitions import resources_from_env

    if args.limit < 0:
        raise CliplabError(f"--limit must be >= 0, got {args.limit}")
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
    from assets._report import FIGURE_URL_DEFAULT
    from pipelines.figure_server import start_figure_server

    home = os.environ["DAGSTER_HOME"]
    # this interpreter's dagster, so the venv need not be on PATH (`dagster dev` starts its webserver, daemon and
    # code servers with sys.executable too)
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    print(f"cliplab: DAGSTER_HOME={home}; {' '.join(cmd)}")
    os.chdir(REPO)
    url = os.environ.setdefault("CLIPLAB_FIGURE_URL", FIGURE_URL_DEFAULT)
    from resources.objectstore import is_remote

    root = os.environ.get("CLIPLAB_ARTIFACTS", "./artifacts")
    figures = f"{root.rstrip('/')}/_figures" if is_remote(root) else Path(root).resolve() / "_figures"
    try:
        server = start_figure_server(figures, url)
        print(f"cliplab: figures from {figures} at {url}")
    except OSError as e:  # the pictures stay files; the UI shows their paths
        server = None
        print(f"cliplab: cannot serve figures at {url} ({e.strerror}); set CLIPLAB_FIGURE_URL to a free port",
              file=sys.stderr)
    # A shell's background job starts with SIGINT ignored, and dagster dev maps SIGTERM to SIGINT's handler: an
    # inherited "ignore" would make it deaf to both. A handler here is reset to the default in the child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # `kill <pid>` of cliplab stops dagster dev too
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached dagster dev too: let it shut its children down
        return proc.wait()
    finally:
        if server is not None:
            server.shutdown()


def cmd_list(args) -> int:
    from pipelines.definitions import resources_from_env

    res = resources_from_env(args.artifacts)
    keys = res["zoo"].known_keys() if args.what == "models" else res["datasets"].known_keys()
    print("\n".join(keys))
    return 0


def _registry_path() -> str:
    return os.environ.get("CLIPLAB_REGISTRY", "registry.toml")


def cmd_models_add(args) -> int:
    import tomllib

    from cliplab.errors import CliplabError
    from resources.registry import add_model_entry

    fields = {"kind": args.kind}
    fields |= {k: v for k in ("arch", "pretrained", "path", "base", "data", "tower") if (v := getattr(args, k)) is not None}
    if args.seed is not None:
        fields["seed"] = args.seed
    for item in args.set or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise CliplabError(f"--set takes name=value, got {item!r}")
        try:
            fields[name.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            fields[name.strip()] = raw  # a bare word is a string
    if args.path is not None:
        fields["path"] = str(Path(args.path).expanduser().resolve())
    spec = add_model_entry(_registry_path(), args.key, fields)
    print(f"cliplab: added model {spec.key!r} ({spec.kind}) to {_registry_path()}; "
          f"`cliplab run --model {spec.key}` or the registry sensor picks it up")
    return 0


def cmd_models_rm(args) -> int:
    from dagster import DagsterInstance

    from resources.registry import remove_model_entry

    remove_model_entry(_registry_path(), args.key)
    print(f"cliplab: removed model {args.key!r} from {_registry_path()}")
    return _remove_partitions(DagsterInstance.get(), args.key, None, args.purge, args.artifacts)


def cmd_partitions_rm(args) -> int:
    from dagster import DagsterInstance

    from cliplab.errors import CliplabError
    from resources.registry import validate_key

    if not args.model and not args.dataset:
        raise CliplabError("partitions rm needs --model and/or --dataset")
    instance = DagsterInstance.get()
    if args.model:
        return _remove_partitions(instance, validate_key(args.model, "model key"), args.dataset, args.purge, args.artifacts)
    validate_key(args.dataset, "dataset key")
    instance.delete_dynamic_partition("dataset", args.dataset)
    print(f"cliplab: dataset partition {args.dataset!r} removed from the instance ({os.environ['DAGSTER_HOME']})")
    return 0


def _remove_partitions(instance, model: str, dataset: str | None, purge: bool, artifacts: str | None) -> int:
    """The model's partition leaves the instance (when no dataset is given; a model × dataset pair is not a partition
    of its own); with `purge`, its artifacts leave the store: Parquet partitions, LanceDB rows, and, for the whole
    model, its checkpoint folder."""
    import shutil

    from pipelines.definitions import resources_from_env

    if dataset is None:
        if model in instance.get_dynamic_partitions("model"):
            instance.delete_dynamic_partition("model", model)
            print(f"cliplab: model partition {model!r} removed from the instance ({os.environ['DAGSTER_HOME']})")
        else:
            print(f"cliplab: model {model!r} is not a partition of the instance ({os.environ['DAGSTER_HOME']})")
    if not purge:
        if dataset is not None:
            print("cliplab: a (model, dataset) pair has no partition of its own; --purge deletes its artifacts")
        return 0
    from resources.objectstore import is_remote

    res = resources_from_env(artifacts)
    folders = res["store"].delete_partitions(model, dataset)
    rows = res["lance"].delete_partitions(model, dataset) if is_remote(res["lance"].uri) or Path(res["lance"].uri).exists() else 0
    checkpoint = res["zoo"].checkpoint_dir(model)
    if dataset is None and res["zoo"].delete_stored_checkpoint(model):
        print(f"cliplab: deleted {res['zoo'].checkpoint_uri(model)}")
    if dataset is None and checkpoint.is_dir():
        shutil.rmtree(checkpoint)
        print(f"cliplab: deleted {checkpoint}")
    print(f"cliplab: deleted {len(folders)} Parquet partitions and {rows} LanceDB rows of model={model}"
          + (f" dataset={dataset}" if dataset else ""))
    return 0


def cmd_status(args) -> int:
    from collections import Counter

    from dagster import DagsterInstance

    from pipelines.definitions import defs
    from pipelines.status import STATES, partition_status

    instance = DagsterInstance.get()
    rows = partition_status(instance, defs.resolve_asset_graph(), [args.model] if args.model else None, [args.dataset] if args.dataset else None)
    if not rows:
        print(f"cliplab: no model × dataset partitions in the instance ({os.environ['DAGSTER_HOME']}); run `cliplab run`")
        return 0
    pairs = sorted({(r["model"], r["dataset"]) for r in rows})
    width = max(len(f"{m} × {d}") for m, d in pairs)
    print(f"{'model × dataset':{width}}  " + "  ".join(f"{s:>12}" for s in STATES))
    for m, d in pairs:
        counts = Counter(r["status"] for r in rows if (r["model"], r["dataset"]) == (m, d))
        print(f"{f'{m} × {d}':{width}}  " + "  ".join(f"{counts.get(s, 0):12d}" for s in STATES))
    if args.assets:
        print()
        for r in rows:
            if r["status"] != "materialised" or args.assets == "all":
                print(f"{r['model']} × {r['dataset']}  {r['asset']:32} {r['status']}")
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
    m = sub.add_parser("models", help="list registered models; `models add` / `models rm` edit the registry")
    m.set_defaults(fn=cmd_list, what="models")
    msub = m.add_subparsers(dest="models_command")
    add = msub.add_parser("add", help="add a model entry to the registry (checked before it is written)")
    add.add_argument("key", help="partition key, a slug such as vit-b-32.mine")
    add.add_argument("--kind", required=True, choices=["open_clip", "checkpoint", "toy", "aft"])
    for name, what in (("arch", "open_clip architecture or toy-vit"), ("pretrained", "open_clip tag"),
                       ("path", "checkpoint file"), ("base", "base model key (aft; checkpoint with --tower visual)"),
                       ("data", "training dataset key (aft)"), ("tower", "full or visual")):
        add.add_argument(f"--{name}", help=what)
    add.add_argument("--seed", type=int)
    add.add_argument("--set", action="append", metavar="NAME=VALUE", help="any other field (TOML value), repeatable")
    add.set_defaults(fn=cmd_models_add)
    rm = msub.add_parser("rm", help="remove a model from the registry and its partition from the instance")
    rm.add_argument("key")
    rm.add_argument("--purge", action="store_true", help="also delete its artifacts (Parquet, LanceDB rows, checkpoint)")
    rm.set_defaults(fn=cmd_models_rm)
    sub.add_parser("datasets", help="list registered datasets").set_defaults(fn=cmd_list, what="datasets")
    parts = sub.add_parser("partitions", help="`partitions rm`: remove partitions the UI cannot delete")
    psub = parts.add_subparsers(dest="partitions_command", required=True)
    prm = psub.add_parser("rm", help="remove a model (or dataset) partition from the instance")
    prm.add_argument("--model")
    prm.add_argument("--dataset")
    prm.add_argument("--purge", action="store_true", help="also delete the artifacts of the model (× dataset)")
    prm.set_defaults(fn=cmd_partitions_rm)
    st = sub.add_parser("status", help="per model × dataset: materialised / stale / failed / missing assets")
    st.add_argument("--model")
    st.add_argument("--dataset")
    st.add_argument("--assets", nargs="?", const="pending", choices=["pending", "all"],
                    help="list the assets (pending: the ones not materialised and fresh; all)")
    st.set_defaults(fn=cmd_status)
    from pipelines import heads_cli
    from pipelines.explorer import cli as explore_cli

    heads_cli.add_parser(sub)
    explore_cli.add_parser(sub)
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

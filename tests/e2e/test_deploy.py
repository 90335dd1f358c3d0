"""The multi-machine deployment, for real on one machine: Dagster's instance on PostgreSQL, the artifact root on an
S3-compatible object store, every step a Celery task on a Redis broker, served by two workers that stand for two
machines (one on the `dagster` queue, one on the `gpu` queue, each with its own local cache), the runs started by
`dagster job execute` from a third process. Two partitions go through it, and their tables must equal an in-process
run's. Everything is started by the test (Debian's `postgresql` and `redis-server`, installed with apt-get when
missing; `moto` in server mode for S3) and stopped at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent
BUCKET = "cliplab-deploy"
MODELS = ("toy-vit.s0", "toy-vit.s1")
DATASET = "toyworld"
TOYWORLD = {"n_train": 240, "n_val": 96}
STEPS = 4
ANALYSE = ("dataset_manifest", "class_text_embeddings", "zero_shot_predictions", "patch_features",
           "prominent_patches", "concept_clusters")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready, timeout: float = 60.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready\n{tail}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.3)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30.0) -> None:
    """Stop a process started in its own session, with everything it started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):  # children left in the group (celery's pool)
        os.killpg(proc.pid, signal.SIGKILL)


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _debian_servers() -> Path:
    """Debian's PostgreSQL and Redis, installed with apt-get when missing (CI runs as root on a fresh machine)."""
    if _postgres_bin() is None or not shutil.which("redis-server"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail("the deployment test needs Debian's postgresql and redis-server: apt-get install them (as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=900, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql", "redis-server"], check=True, env=env,
                       timeout=1800, capture_output=True)
    return _postgres_bin()


@pytest.fixture(scope="module")
def servers():
    """PostgreSQL (a fresh cluster in a temporary folder), Redis and a moto S3 server on free loopback ports; every one
    stopped, and the temporary folders removed, when the module's tests are done (passed or not)."""
    pg_bin = _debian_servers()
    import dagster_celery  # noqa: F401 — scripts/setup.sh installs the deploy extra: missing is a failure, not a skip
    started: list[subprocess.Popen] = []
    temp = Path(tempfile.mkdtemp(prefix="cliplab-deploy-"))
    temp.chmod(0o755)  # the cluster's owner (postgres) must reach its folder
    try:
        # PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user when the test runs as root
        as_user = {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}
        data = temp / "pg"
        data.mkdir()
        if as_user:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run([str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120, cwd=temp, **as_user)
        pg_port = _free_port()
        with open(temp / "postgres.log", "w") as log:
            pg = subprocess.Popen([str(pg_bin / "postgres"), "-D", str(data), "-p", str(pg_port), "-k", str(data),
                                   "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                                  stdout=subprocess.DEVNULL, stderr=log, cwd=temp, start_new_session=True, **as_user)
        started.append(pg)
        _wait("postgres", lambda: subprocess.run([str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg_port)],
                                                 check=False, capture_output=True).returncode == 0, proc=pg, log=temp / "postgres.log")
        subprocess.run([str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", "dagster"],
                       check=True, capture_output=True, timeout=60)

        redis_port = _free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(temp)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(redis)

        def redis_ready():
            with socket.create_connection(("127.0.0.1", redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        _wait("redis", redis_ready, proc=redis)

        s3_port = _free_port()
        moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(moto)
        endpoint = f"http://127.0.0.1:{s3_port}"
        _wait("moto", lambda: socket.create_connection(("127.0.0.1", s3_port), timeout=1).close() is None, proc=moto)
        aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "cliplab", "AWS_SECRET_ACCESS_KEY": "cliplab-secret",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="cliplab",
                     aws_secret_access_key="cliplab-secret").create_bucket(Bucket=BUCKET)
        yield {"temp": temp, "pg_port": pg_port, "redis": f"redis://127.0.0.1:{redis_port}", "aws": aws}
    finally:
        for proc in reversed(started):
            _stop(proc, signal.SIGINT if proc is started[0] else signal.SIGTERM)  # postgres: fast shutdown
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(servers):
    """A Dagster instance on the test's PostgreSQL, the artifact root on its S3 server, and two Celery workers (queues
    `dagster` and `gpu`) started with `dagster-celery worker start`, each with its own cache (two machines)."""
    temp = servers["temp"]
    home = temp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(f"""
storage:
  postgres:
    postgres_db: {{username: postgres, password: unused, hostname: 127.0.0.1, db_name: dagster, port: {servers['pg_port']},
                  scheme: postgresql+psycopg2}}  # SQLAlchemy 2.1 would pick psycopg 3, whose NOTIFY fails
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
nux:
  enabled: false
""")
    celery_yaml = temp / "celery.yaml"
    celery_yaml.write_text(json.dumps({"execution": {"config": {"broker": f"{servers['redis']}/0",
                                                                 "backend": f"{servers['redis']}/1"}}}))
    env = {**os.environ, **servers["aws"], "DAGSTER_HOME": str(home), "CLIPLAB_ARTIFACTS": f"s3://{BUCKET}/artifacts",
           "CLIPLAB_CELERY_BROKER": f"{servers['redis']}/0", "CLIPLAB_CELERY_BACKEND": f"{servers['redis']}/1",
           "CLIPLAB_REFERENCE_DIR": str(SHARED / "data"), "CLIPLAB_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "CLIPLAB_CACHE": str(temp / "cache-coordinator"), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    env.pop("CLIPLAB_CELERY_GPU_QUEUE", None)
    workers = []
    try:
        for name, queue in (("cpu", "dagster"), ("gpu", "gpu")):
            with open(temp / f"worker-{name}.log", "w") as log:
                workers.append(subprocess.Popen(
                    [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(celery_yaml),
                     "-q", queue, "-n", name, "--", "--concurrency=1", "--without-gossip", "--without-mingle"],
                    cwd=REPO, env={**env, "CLIPLAB_CACHE": str(temp / f"cache-{name}")}, stdout=log, stderr=log,
                    start_new_session=True))
        for name, worker in zip(("cpu", "gpu"), workers):
            _wait(f"celery worker {name}", lambda name=name: " ready." in (temp / f"worker-{name}.log").read_text(),
                  timeout=120, proc=worker, log=temp / f"worker-{name}.log")
        yield {"env": env, "home": home, "temp": temp, "root": f"s3://{BUCKET}/artifacts"}
    finally:
        for worker in workers:
            _stop(worker, signal.SIGTERM, timeout=30)


def _execute(env: dict, job: str, partition: str, run_config: dict, temp: Path, tags: dict | None = None) -> subprocess.Popen:
    """`dagster job execute` of one partition in a process of its own (the machine that starts runs)."""
    cfg = temp / f"{job}-{partition.replace('|', '_')}.json"
    cfg.write_text(json.dumps(run_config))  # YAML is a superset of JSON
    parts = partition.split("|")
    tags = {"dagster/partition": partition, **(tags or {}),
            **({"dagster/partition/dataset": parts[0], "dagster/partition/model": parts[1]} if len(parts) == 2 else {})}
    with open(temp / f"run-{job}-{partition.replace('|', '_')}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "dagster", "job", "execute", "-m", "pipelines.definitions",
                                 "-a", "defs", "-j", job, "-c", str(cfg), "--tags", json.dumps(tags)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, what: str, temp: Path, timeout: float = 600) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        code = "timeout"
    if code != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(temp.glob("*.log")))
        pytest.fail(f"{what}: exit {code}\n{logs}")


def _in_process(root: Path) -> dict:
    """The same runs in this process on a local folder root (the reference)."""
    from dagster import DagsterInstance

    from pipelines.definitions import defs, resources_from_env

    os.environ.setdefault("CLIPLAB_REFERENCE_DIR", str(SHARED / "data"))
    resources = resources_from_env(str(root))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", list(MODELS))
    instance.add_dynamic_partitions("dataset", [DATASET])
    from dagster import MultiPartitionKey

    runs = [("models", MODELS[0], {"ops": {"toyworld": {"config": TOYWORLD}, "checkpoint": {"config": {"steps": STEPS}}}}),
            ("checkpoints", MODELS[1], {"ops": {"checkpoint": {"config": {"steps": STEPS}}}})]
    runs += [("analyse", MultiPartitionKey({"model": m, "dataset": DATASET}), {}) for m in MODELS]
    for job, key, run_config in runs:
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=key, run_config=run_config,
                                                             resources=resources, raise_on_error=False)
        assert result.success, (job, key)
    return resources


def test_steps_in_the_gpu_pool_and_only_they_go_to_the_gpu_queue(monkeypatch):
    """The routing of every job's every step, from the execution plan (no server needed)."""
    import dagster_celery  # noqa: F401 — scripts/setup.sh installs the deploy extra: missing is a failure, not a skip
    from dagster._core.execution.api import create_execution_plan

    from pipelines.definitions import defs
    from pipelines.deploy import queue_for, with_queue_tags

    seen = set()
    for job in ("models", "main", "evaluation"):
        plan = create_execution_plan(defs.resolve_job_def(job))
        tagged = with_queue_tags(plan)
        assert [s.key for s in tagged.steps] == [s.key for s in plan.steps]
        for step in tagged.steps:
            want = "gpu" if step.pool == "gpu" else "dagster"
            assert queue_for(step, "dagster") == want == step.tags.get("dagster-celery/queue", "dagster"), (job, step.key)
            assert tagged.get_step_by_key(step.key) is step
            seen.add(want)
    assert seen == {"gpu", "dagster"}
    monkeypatch.setenv("CLIPLAB_CELERY_GPU_QUEUE", "a100")
    plan = with_queue_tags(create_execution_plan(defs.resolve_job_def("checkpoints")))
    assert [s.tags["dagster-celery/queue"] for s in plan.steps] == ["a100"]


@pytest.mark.slow
def test_two_partitions_through_postgres_s3_and_celery_equal_the_in_process_run(deployment, tmp_path):
    from dagster import DagsterInstance

    env, temp, root = deployment["env"], deployment["temp"], deployment["root"]
    t0 = time.perf_counter()
    with DagsterInstance.from_config(str(deployment["home"])) as instance:
        instance.add_dynamic_partitions("model", list(MODELS))
        instance.add_dynamic_partitions("dataset", [DATASET])

    # the checkpoints: toyworld and the first toy CLIP, then the second (it trains on the same toyworld)
    _finish(_execute(env, "models", MODELS[0], {"ops": {"toyworld": {"config": TOYWORLD},
                                                      "checkpoint": {"config": {"steps": STEPS}}}}, temp),
            f"models {MODELS[0]}", temp)
    _finish(_execute(env, "checkpoints", MODELS[1], {"ops": {"checkpoint": {"config": {"steps": STEPS}}}}, temp),
            f"checkpoints {MODELS[1]}", temp)
    # the two (model, dataset) partitions' analyses at once: their steps share the two workers
    runs = [_execute(env, "analyse", f"{DATASET}|{m}", {}, temp) for m in MODELS]
    for m, proc in zip(MODELS, runs):
        _finish(proc, f"analyse {DATASET}|{m}", temp)
    deployed_s = time.perf_counter() - t0

    local = tmp_path / "artifacts"
    t1 = time.perf_counter()
    resources = _in_process(local)
    in_process_s = time.perf_counter() - t1
    print(f"\nthrough Postgres + S3 + Celery: {deployed_s:.1f} s; in process: {in_process_s:.1f} s")

    with pytest.MonkeyPatch.context() as mp:
        for k, v in deployment["env"].items():
            if k.startswith("AWS_"):
                mp.setenv(k, v)
        mp.setenv("CLIPLAB_CACHE", str(temp / "cache-test"))
        from pipelines.definitions import resources_from_env
        from resources.objectstore import read_bytes

        remote = resources_from_env(root)
        store, rstore = resources["store"], remote["store"]

        # 1. the runs are in PostgreSQL, every step ran on a Celery worker, GPU steps on the `gpu` queue's worker
        with DagsterInstance.from_config(str(deployment["home"])) as instance:
            from dagster import DagsterRunStatus, RunsFilter

            recorded = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
            assert sorted(r.job_name for r in recorded) == ["analyse", "analyse", "checkpoints", "models"]
            pools = _step_pools()
            for run in recorded:
                ran_on, queues = {}, {}
                for entry in instance.all_logs(run.run_id):
                    ev = entry.dagster_event
                    if ev is None or not ev.is_engine_event:
                        continue
                    if "Celery worker" in (ev.engine_event_data.metadata or {}):
                        ran_on[ev.step_key] = ev.engine_event_data.metadata["Celery worker"].value
                    if m := re.fullmatch(r'Submitting celery task for step "(.+)" to queue "(.+)"\.', ev.message or ""):
                        queues[m.group(1)] = m.group(2)
                assert ran_on, f"run {run.job_name}: no step ran on a Celery worker"
                assert set(queues) == set(ran_on), run.job_name
                for step, worker in ran_on.items():
                    gpu = pools.get(step) == "gpu"
                    assert worker.startswith("gpu@" if gpu else "cpu@"), (run.job_name, step, worker)
                    assert queues[step] == ("gpu" if gpu else "dagster"), (run.job_name, step, queues[step])
                assert any(pools.get(s) == "gpu" for s in ran_on), run.job_name  # each job has a GPU step

        # 2. checkpoints on the store, uploaded whole: the weights' sha256 is the sidecar's and the in-process one's
        for m in MODELS:
            sidecar = json.loads(read_bytes(f"{root}/checkpoints/{m}/open_clip_config.json"))
            weights = read_bytes(f"{root}/checkpoints/{m}/open_clip_model.safetensors")
            assert hashlib.sha256(weights).hexdigest() == sidecar["cliplab"]["sha256"]
            assert sidecar["cliplab"]["sha256"] == json.loads(
                (local / "checkpoints" / m / "open_clip_config.json").read_text())["cliplab"]["sha256"], m
            assert remote["zoo"].has_checkpoint(m)  # a third machine's cache gets the same verified copy
        assert sorted(remote["zoo"].known_keys()) == sorted(set(resources["zoo"].known_keys()))

        # 3. the Parquet tables equal the in-process run's, partition by partition
        for split in ("train", "val"):
            assert_frame_equal(pl.read_parquet(f"{root}/toyworld/split={split}/part-0.parquet"),
                               pl.read_parquet(local / "toyworld" / f"split={split}" / "part-0.parquet"))
        for asset in ANALYSE:
            for m in MODELS:
                got = rstore.read(asset, model=m, dataset=DATASET).collect()
                want = store.read(asset, model=m, dataset=DATASET).collect()
                assert_frame_equal(got, want), (asset, m)
            assert rstore.scan(asset).select(pl.len()).collect().item() == store.scan(asset).select(pl.len()).collect().item()

        # 4. LanceDB on the store: the same rows
        def rows(lance):
            return (lance.table("class_text_embeddings", model=MODELS[0]).to_polars().collect()
                    .sort("model", "dataset", "class_index"))

        assert_frame_equal(rows(remote["lance"]), rows(resources["lance"]))

        # 5. figures on the store, served from it by the figure server at the URL the metadata shows
        with DagsterInstance.from_config(str(deployment["home"])) as instance:
            from dagster import AssetKey

            event = instance.get_latest_materialization_event(AssetKey("patch_features"))
            meta = event.asset_materialization.metadata
        md, file = meta["token PCA"].value, meta["token PCA (file)"].value
        assert file.startswith(f"{root}/_figures/patch_features/"), file
        digest = re.search(r"/_sha256/([0-9a-f]{20})\.png\)", md).group(1)
        png = read_bytes(f"{root}/_figures/_sha256/{digest}.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and hashlib.sha256(png).hexdigest()[:20] == digest
        assert read_bytes(file) == png
        from pipelines.figure_server import start_figure_server

        port = _free_port()
        server = start_figure_server(f"{root}/_figures", f"http://127.0.0.1:{port}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sha256/{digest}.png", timeout=10) as r:
                assert r.read() == png and r.headers["Content-Type"] == "image/png"
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/../checkpoints/{MODELS[0]}/open_clip_config.json", timeout=10)
        finally:
            server.shutdown()

        # 6. nothing half-written left on the store
        import pyarrow.fs as pafs

        fs, _ = rstore._fs()
        assert not fs.get_file_info(pafs.FileSelector(f"{BUCKET}/artifacts/.staging", allow_not_found=True))


def _step_pools() -> dict[str, str | None]:
    """step key → the pool of its op, for every node of the jobs the test runs."""
    from pipelines.definitions import defs

    pools = {}
    for job in ("models", "checkpoints", "analyse"):
        for node in defs.resolve_job_def(job).graph.node_dict.values():
            pools[node.name] = getattr(node.definition, "pool", None)
    return pools

"""The CLI as a user runs it (subprocesses), and the Dagster webserver serving the lineage."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pipelines.cli"]


def env_for(tmp_path: Path) -> dict:
    # the head-span text banks are published files: offline, read from ../shared/data as scripts/main.sh does
    return {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "CLIPLAB_ARTIFACTS": str(tmp_path / "art"), "HF_HUB_OFFLINE": "1",
            "CLIPLAB_REFERENCE_DIR": str(REPO.parent / "shared" / "data")}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    env = env_for(tmp)
    proc = subprocess.run([*CLI, "run", "--steps", "2", "--n-train", "120", "--n-val", "48"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    return tmp, env, proc


def test_run_prints_where_things_are(ran):
    tmp, _, proc = ran
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"artifacts: {tmp / 'art'}" in proc.stdout
    assert "cliplab ui" in proc.stdout
    assert (tmp / "art/patch_features/model=toy-vit.s0/dataset=toyworld/part-0.parquet").is_file()


def test_run_is_recorded_in_the_instance(ran):
    from dagster import DagsterInstance

    tmp, _, _ = ran
    with DagsterInstance.from_config(str(tmp / "dh")) as instance:
        runs = instance.get_runs()
        # toyworld + the toy checkpoint (partitioned by model), then every analysis of the (model, dataset) partition
        assert [(r.job_name, r.tags["dagster/partition"]) for r in reversed(runs)] == [
            ("models", "toy-vit.s0"), ("main", "toyworld|toy-vit.s0")]
        assert instance.get_dynamic_partitions("model") == ["toy-vit.s0"]


def test_query_prints_rows_with_partition_columns(ran):
    _, env, _ = ran
    out = subprocess.run([*CLI, "query", "zero_shot_predictions", "--limit", "3"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "shape: (3," in out.stdout and "toy-vit.s0" in out.stdout and "toyworld" in out.stdout


def test_models_lists_the_trained_toy(ran):
    _, env, _ = ran
    out = subprocess.run([*CLI, "models"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "toy-vit.s0" in out.stdout.split()
    assert "vit-b-32.openai" not in out.stdout.split()  # the shipped registry's OpenAI examples are commented out


def test_bad_partition_key_is_refused_before_anything_runs(tmp_path):
    env = env_for(tmp_path)
    out = subprocess.run([*CLI, "run", "--model", "vit|b"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "invalid model key 'vit|b'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "art").exists()


def test_unknown_model_is_refused_with_the_known_ones(tmp_path):
    out = subprocess.run([*CLI, "run", "--model", "vit-h-14.nobody"], cwd=REPO, env=env_for(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown model 'vit-h-14.nobody'" in out.stderr and "toy-vit.s0" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cliplab_ui_serves_the_lineage_with_both_partition_dimensions(ran):
    """`cliplab ui` (dagster dev: webserver + daemon) answers the UI's GraphQL with the asset graph."""
    _, env, _ = ran
    port = _free_port()
    # as the README says it: no activated venv, no PATH help, no CLIPLAB_REFERENCE_DIR (the CLI finds ../shared/data)
    env = {k: v for k, v in env.items() if k != "CLIPLAB_REFERENCE_DIR"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", os.defpath).split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    env["CLIPLAB_FIGURE_URL"] = figures = f"http://127.0.0.1:{_free_port()}"
    # started as a shell starts a background job (SIGINT ignored): `kill <pid>` must still stop everything
    server = subprocess.Popen([str(Path(sys.executable).parent / "cliplab"), "ui", "--port", str(port)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    graceful = False
    try:
        query = """{ assetNodes { assetKey { path } dependencyKeys { path }
                     partitionDefinition { dimensionTypes { name } } } }"""
        deadline, data = time.time() + 120, None
        while time.time() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                             headers={"Content-Type": "application/json"})
                data = json.loads(urllib.request.urlopen(req, timeout=10).read())
                if data.get("data", {}).get("assetNodes"):
                    break
            except OSError:
                time.sleep(1)
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["data"]["assetNodes"]}
        assert {"toyworld", "checkpoint", "dataset_manifest", "class_text_embeddings", "zero_shot_predictions", "patch_features"} <= set(nodes)
        dims = [d["name"] for d in nodes["patch_features"]["partitionDefinition"]["dimensionTypes"]]
        assert sorted(dims) == ["dataset", "model"]
        assert ["dataset_manifest"] in [d["path"] for d in nodes["patch_features"]["dependencyKeys"]]
        assert ["toyworld"] in [d["path"] for d in nodes["checkpoint"]["dependencyKeys"]]
        assert ["checkpoint"] in [d["path"] for d in nodes["patch_features"]["dependencyKeys"]]
        assert sorted(d["name"] for d in nodes["checkpoint"]["partitionDefinition"]["dimensionTypes"]) == ["default"]
        assert ["visual_concept_descriptors"] in [d["path"] for d in nodes["mi_curves"]["dependencyKeys"]]
        assert ["head_contributions"] in [d["path"] for d in nodes["head_spans"]["dependencyKeys"]]
        runs = '{ runsOrError { ... on Runs { results { jobName tags { key value } } } } }'
        req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": runs}).encode(),
                                     headers={"Content-Type": "application/json"})
        results = json.loads(urllib.request.urlopen(req, timeout=10).read())["data"]["runsOrError"]["results"]
        assert any(r["jobName"] == "main" and {"key": "dagster/partition", "value": "toyworld|toy-vit.s0"} in r["tags"]
                   for r in results)  # the CLI's run is in the UI's run history
        # the plots in the run's metadata are served beside the UI
        png = next((Path(env["CLIPLAB_ARTIFACTS"]) / "_figures" / "_sha256").glob("*.png"))
        with urllib.request.urlopen(f"{figures}/_sha256/{png.name}", timeout=10) as r:
            assert r.read() == png.read_bytes()
        server.send_signal(signal.SIGTERM)  # cliplab's own pid, as `kill` would
        server.wait(timeout=90)
        graceful = True
    finally:
        if not graceful:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    import psutil

    from pipelines.liveness import is_alive

    def group(pid):
        try:
            return os.getpgid(pid)
        except OSError:
            return None

    # dagster dev's code servers notice their parent is gone on their next heartbeat and exit then (≈ 40 s here)
    deadline = time.time() + 120
    while (leftover := [p.pid for p in psutil.process_iter() if group(p.pid) == server.pid and is_alive(p.pid)]) and \
            time.time() < deadline:
        time.sleep(2)
    if leftover:
        os.killpg(server.pid, signal.SIGKILL)
    assert not leftover, f"processes of cliplab ui outlived it: {leftover}"  # webserver, daemon, code servers


def test_one_environment_for_cli_ui_and_scripts(tmp_path, monkeypatch):
    """DAGSTER_HOME defaults to ./.dagster_home with the project's dagster.yaml; a checkout's ../shared/data is the
    reference folder unless the user chose one."""
    from pipelines.environment import prepare_environment

    repo = tmp_path / "checkout" / "main"
    repo.mkdir(parents=True)
    (repo / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "checkout" / "shared" / "data" / "text-banks").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # prepare_environment writes os.environ itself: the whole mapping is restored after the test
    monkeypatch.setattr(os, "environ", os.environ.copy())
    os.environ.pop("DAGSTER_HOME", None)
    os.environ.pop("CLIPLAB_REFERENCE_DIR", None)
    env = prepare_environment(repo)
    assert env == {"DAGSTER_HOME": str(tmp_path / ".dagster_home"),
                   "CLIPLAB_REFERENCE_DIR": str(tmp_path / "checkout" / "shared" / "data")}
    assert (tmp_path / ".dagster_home" / "dagster.yaml").read_text().startswith("telemetry")
    monkeypatch.setenv("CLIPLAB_REFERENCE_DIR", "/elsewhere")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "mine"))
    assert prepare_environment(repo) == {"DAGSTER_HOME": str(tmp_path / "mine"), "CLIPLAB_REFERENCE_DIR": "/elsewhere"}
    (tmp_path / "checkout" / "shared" / "data" / "text-banks").rmdir()
    monkeypatch.delenv("CLIPLAB_REFERENCE_DIR")
    assert "CLIPLAB_REFERENCE_DIR" not in prepare_environment(repo)


def test_status_counts_what_the_run_materialised(ran):
    _, env, _ = ran
    out = subprocess.run([*CLI, "status", "--assets"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split()[-4:] == ["materialised", "stale", "failed", "missing"]
    assert row.startswith("toy-vit.s0 × toyworld")
    materialised, stale, failed, missing = map(int, row.split()[-4:])
    assert materialised >= 25 and stale == failed == 0  # `main` materialises every (model, dataset) asset


def test_models_add_and_rm_edit_the_registry(tmp_path):
    reg = tmp_path / "registry.toml"
    reg.write_text("# mine\n")
    env = {**env_for(tmp_path), "CLIPLAB_REGISTRY": str(reg)}

    def cli(*argv):
        return subprocess.run([*CLI, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    ok = cli("models", "add", "toy-vit.mine", "--kind", "aft", "--base", "toy-vit.s0", "--data", "toyworld",
             "--set", "eps=2.0", "--set", "steps=10")
    assert ok.returncode == 0, ok.stderr
    assert "toy-vit.mine" in cli("models").stdout.split()
    assert 'eps = 2.0' in reg.read_text() and reg.read_text().startswith("# mine\n")
    before = reg.read_text()
    bad = cli("models", "add", "toy-vit.bad", "--kind", "aft", "--base", "toy-vit.s0", "--data", "toyworld", "--set", "eps=-1")
    assert bad.returncode == 2 and "eps must be > 0" in bad.stderr and reg.read_text() == before  # checked first
    again = cli("models", "add", "toy-vit.mine", "--kind", "toy")
    assert again.returncode == 2 and "already in" in again.stderr
    gone = cli("models", "rm", "toy-vit.mine")
    assert gone.returncode == 0, gone.stderr
    assert reg.read_text() == "# mine\n" and "toy-vit.mine" not in cli("models").stdout.split()
    assert cli("models", "rm", "toy-vit.mine").returncode == 2


def test_partitions_rm_removes_what_the_ui_cannot(ran, tmp_path):
    import shutil

    from dagster import DagsterInstance

    src, env, _ = ran
    dh = tmp_path / "dh"
    shutil.copytree(src / "dh", dh)
    shutil.copytree(src / "art", tmp_path / "art")
    env = {**env, "DAGSTER_HOME": str(dh), "CLIPLAB_ARTIFACTS": str(tmp_path / "art")}
    out = subprocess.run([*CLI, "partitions", "rm", "--model", "toy-vit.s0", "--purge"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    with DagsterInstance.from_config(str(dh)) as instance:
        assert "toy-vit.s0" not in instance.get_dynamic_partitions("model")
    assert not (tmp_path / "art/patch_features/model=toy-vit.s0").exists()
    assert not (tmp_path / "art/checkpoints/toy-vit.s0").exists()
    assert (tmp_path / "art/toyworld").is_dir()  # toyworld is not the model's
    import lancedb

    db = lancedb.connect(str(tmp_path / "art/lancedb"))
    assert all(db.open_table(t).count_rows("model = 'toy-vit.s0'") == 0 for t in db.list_tables().tables)


@pytest.mark.parametrize("argv, message", [(["query", "dataset_manifest", "--limit", "-1"], "--limit must be >= 0"),
                                           (["query", "../../etc"], "invalid asset name")])
def test_query_refuses_bad_arguments_in_one_line(tmp_path, argv, message):
    out = subprocess.run([*CLI, *argv], cwd=REPO, env=env_for(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr

"""Two runs of one partition at once, in real processes: neither deletes the other's staged file; a dead run's
staged file is cleared by the next write."""

import subprocess
import sys
import textwrap
import time

import pyarrow as pa

from resources.store import ArtifactStore

HOLDER = textwrap.dedent("""
    import sys, time, pathlib
    import pyarrow as pa
    from resources.store import ArtifactStore
    root, go = sys.argv[1], pathlib.Path(sys.argv[2])
    schema = pa.schema([("x", pa.int64())])
    with ArtifactStore(root=root).writer("t", schema, model="m", dataset="d") as w:
        w.write_table(pa.table({"x": [1, 2, 3]}, schema=schema))
        print("staged", flush=True)
        while not go.exists():  # holds its staged file open until told to finish
            time.sleep(0.05)
        w.write_table(pa.table({"x": [4]}, schema=schema))
""")


def _holder(root, go):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(go)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    return proc


def test_a_second_run_of_the_partition_leaves_the_first_runs_staged_file_alone(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    go = tmp_path / "go"
    first = _holder(tmp_path, go)
    staged = list((tmp_path / ".staging").iterdir())
    assert len(staged) == 1
    store.write("t", pa.table({"x": [9]}), model="m", dataset="d")  # the second run, while the first writes
    assert staged[0].exists()
    assert store.read("t", model="m", dataset="d").collect()["x"].to_list() == [9]
    go.touch()
    assert first.wait(timeout=60) == 0  # before: FileNotFoundError, its staged file deleted under it
    assert store.read("t", model="m", dataset="d").collect()["x"].to_list() == [1, 2, 3, 4]  # the later commit wins
    assert list((tmp_path / ".staging").iterdir()) == []


def test_the_staged_file_of_a_killed_run_is_cleared_by_the_next_write(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    holder = _holder(tmp_path, tmp_path / "never")
    holder.kill()
    holder.wait(timeout=30)
    time.sleep(0.1)
    assert len(list((tmp_path / ".staging").iterdir())) == 1  # the killed run's half-written file
    store.write("t", pa.table({"x": [5]}), model="m", dataset="d")
    assert list((tmp_path / ".staging").iterdir()) == []
    assert store.read("t", model="m", dataset="d").collect()["x"].to_list() == [5]

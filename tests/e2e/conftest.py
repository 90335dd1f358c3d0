"""`cliplab ui` as a user starts it (a subprocess of the venv's entry point), stopped with everything it started."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cliplab_ui():
    """start(env, port) → the `cliplab ui` process; every one started is stopped (SIGTERM, then SIGKILL) at the end."""
    started = []

    def start(env: dict, port: int) -> subprocess.Popen:
        server = subprocess.Popen([str(Path(sys.executable).parent / "cliplab"), "ui", "--port", str(port)], cwd=REPO,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        started.append(server)
        return server

    yield start
    for server in started:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)

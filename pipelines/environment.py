"""One environment for the CLI, the UI (its webserver, daemon and code servers inherit it) and the scripts.

- DAGSTER_HOME: default ./.dagster_home, with the project's dagster.yaml copied in once;
- CLIPLAB_REFERENCE_DIR: unless the user set it, a checkout's ../shared/data when it holds the published banks
  (otherwise they are downloaded and sha256-checked on first use).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def prepare_environment(repo: Path = REPO) -> dict[str, str]:
    """Set the variables above in os.environ (never overriding the user's); returns the ones cliplab uses."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    if (repo / "dagster.yaml").is_file() and not (home / "dagster.yaml").exists():
        shutil.copy(repo / "dagster.yaml", home / "dagster.yaml")
    shared = repo.parent / "shared" / "data"
    if not os.environ.get("CLIPLAB_REFERENCE_DIR") and (shared / "text-banks").is_dir():
        os.environ["CLIPLAB_REFERENCE_DIR"] = str(shared.resolve())
    return {k: os.environ[k] for k in ("DAGSTER_HOME", "CLIPLAB_REFERENCE_DIR") if k in os.environ}

"""Where results go: the artifact root and the MLflow tracking store (cheap to import: the CLI's checks use them)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# The folders of the hub-smoke profiles' local stand-ins for hub models and data, and what builds each.
STAND_INS = {".hub-smoke": "make hub-smoke", ".hub-smoke-vllm": "make hub-smoke-vllm"}


def artifacts_root(artifacts: str | None = None) -> Path:
    """--artifacts, else $S2D_ARTIFACTS, else ./artifacts."""
    return Path(artifacts or os.environ.get("S2D_ARTIFACTS", "artifacts")).resolve()


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)

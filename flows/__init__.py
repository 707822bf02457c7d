"""Prefect flows: the whole grid in `grid.py`, where its nodes run in `runners.py`."""

from .grid import GridFailed, ablation_grid, artifacts_root
from .runners import with_runner

__all__ = ["GridFailed", "ablation_grid", "artifacts_root", "with_runner"]

"""Prefect flows: the whole grid in `grid.py`."""

from .grid import GridFailed, ablation_grid, artifacts_root

__all__ = ["GridFailed", "ablation_grid", "artifacts_root"]

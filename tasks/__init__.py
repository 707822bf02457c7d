"""Prefect tasks: one per node kind, thin wrappers over `sparse2dense.execution.node_runner`."""

from .nodes import GridRun, node_tasks, report_task

__all__ = ["GridRun", "node_tasks", "report_task"]

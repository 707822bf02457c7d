"""Prefect tasks: one per node kind, thin wrappers over `sparse2dense.runner`."""

from .nodes import KINDS, node_tasks, report_task

__all__ = ["KINDS", "node_tasks", "report_task"]

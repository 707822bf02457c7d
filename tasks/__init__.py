"""Prefect tasks: one per node kind, thin wrappers over `sparse2dense.runner`."""

from .nodes import node_tasks, report_task

__all__ = ["node_tasks", "report_task"]

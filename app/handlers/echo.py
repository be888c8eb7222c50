"""The echo task type: returns its input, the cheapest possible real task."""

from __future__ import annotations

from typing import Any

from app.handlers import TaskInput


def echo(task: TaskInput) -> dict[str, Any]:
    """Return the task's data unchanged."""
    return {"echo": task.data}

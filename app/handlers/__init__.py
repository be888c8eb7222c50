"""What each task type does when a worker runs it.

A handler takes a TaskInput and returns a JSON-serialisable result, or raises TaskFailed with a
message for the task's `error`. Handlers never touch the database: the execution service records
what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TaskFailed(Exception):
    """The task itself cannot succeed (bad input, missing file, downstream refusal)."""


@dataclass(frozen=True)
class TaskInput:
    """One task as a handler sees it."""

    task_type: str
    data: dict[str, Any]
    # For a task of a mass-action: which part of the dataset it takes (0-based) and of how many
    # (the swarm's active bots when it was assigned); None outside a mass-action. Tasks assigned
    # before the count was kept have an index and no count.
    slice_index: int | None
    data_dir: Path
    # Per-task limits for calls to downstream services; None means the service's defaults.
    timeout: float | None = None
    retries: int | None = None
    slice_count: int | None = None

"""Public identifiers: random ids for bots, swarms, workflows and mass-actions; `task-<n>` for
tasks."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

TASK_PREFIX = "task-"
WORKFLOW_PREFIX = "wf-"
MASS_ACTION_PREFIX = "ma"

# The SQL twin of new_id("bot"): 64 random bits, so 50,000 ids are made in one INSERT.
SQL_NEW_BOT_ID = "'bot-' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)"


def new_id(prefix: str) -> str:
    """A fresh random id such as `swarm-1f2e3d4c5b6a7988`."""
    return f"{prefix}-{secrets.token_hex(8)}"


def task_public_id(task_id: int) -> str:
    """The id clients see for a task row."""
    return f"{TASK_PREFIX}{task_id}"


def parse_task_id(public_id: str) -> int | None:
    """The row id behind `task-<n>`, or None when the text is not a task id."""
    if not public_id.startswith(TASK_PREFIX):
        return None
    digits = public_id[len(TASK_PREFIX) :]
    if not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


def iso(moment: datetime | None) -> str | None:
    """A timestamp as the spec writes it: `2024-01-01T00:00:00Z`."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> datetime:
    """Now, timezone-aware."""
    return datetime.now(UTC)

"""The reporting task type: counts, and sum and mean of a metric, per group of rows."""

from __future__ import annotations

import json
from typing import Any

from app.handlers import TaskFailed, TaskInput
from app.handlers.data import is_empty, parse_number
from app.handlers.files import input_records

# A report is stored as a task result: past this many groups only the largest are kept.
MAX_GROUPS = 1000


def report(task: TaskInput) -> dict[str, Any]:
    """Group the records by `group_by` (or all together) and total the `metric` column."""
    records = input_records(task.data, task.data_dir)
    group_by = _column_option(task.data, "group_by", records)
    metric = _column_option(task.data, "metric", records)
    groups: dict[Any, _Group] = {}
    for position, row in enumerate(records, start=1):
        key = _group_key(row.get(group_by)) if group_by else "all"
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(row.get(group_by) if group_by else "all")
        group.add(row, metric, position)
    # Largest groups first, ties in a stable order, so reports compare across runs.
    ordered = sorted(groups.values(), key=lambda group: (-group.count, str(group.value)))
    return {
        "group_by": group_by,
        "metric": metric,
        "rows_in": len(records),
        "groups": [group.summary(metric) for group in ordered[:MAX_GROUPS]],
        "groups_total": len(ordered),
        "generated_rows": min(len(ordered), MAX_GROUPS),
    }


class _Group:
    """Running totals of one group."""

    __slots__ = ("count", "measured", "total", "value")

    def __init__(self, value: Any) -> None:
        self.value = None if is_empty(value) else value
        self.count = 0
        self.measured = 0
        self.total: int | float = 0

    def add(self, row: dict[str, Any], metric: str | None, position: int) -> None:
        self.count += 1
        if metric is None or is_empty(row.get(metric)):
            return
        number = parse_number(row[metric])
        if number is None:
            raise TaskFailed(
                f"metric {metric!r} is not numeric in row {position}: {str(row[metric])[:40]!r}"
            )
        self.measured += 1
        self.total += number

    def summary(self, metric: str | None) -> dict[str, Any]:
        summary: dict[str, Any] = {"group": self.value, "count": self.count}
        if metric is not None:
            summary["sum"] = round(self.total, 6)
            summary["mean"] = round(self.total / self.measured, 4) if self.measured else None
        return summary


def _column_option(data: dict[str, Any], option: str, records: list[dict[str, Any]]) -> str | None:
    column = data.get(option)
    if column is None:
        return None
    if not isinstance(column, str) or not column:
        raise TaskFailed(f"{option!r} must be a column name")
    if records and not any(column in row for row in records):
        raise TaskFailed(f"{option} column {column!r} not found in the data")
    return column


def _group_key(value: Any) -> Any:
    if is_empty(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True, default=str)

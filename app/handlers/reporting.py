"""The reporting task type: counts, and sum and mean of a metric, per group of rows.

On a swarm each bot reports on its part of the rows (as data_processing does) and its result
carries a `merge_state`: groups merge by key (counts and sums add, means weighted by the rows
measured), so the merged report is the report of one task over every row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.handlers import TaskFailed, TaskInput
from app.handlers.data import optional_chunk_size
from app.handlers.datasets import Dataset, open_dataset, row_range
from app.handlers.summaries import ExactSum, canonical, pack, pack_summary, unpack
from app.handlers.values import is_empty, parse_number

# A report is stored as a task result: past this many groups only the largest are kept.
MAX_GROUPS = 1000
# Groups a part's merge state keeps; past this only the largest are kept and the merged report
# says it is approximate.
MAX_STATE_GROUPS = 10_000


def report(task: TaskInput) -> dict[str, Any]:
    """Group the task's rows by `group_by` (or all together) and total the `metric` column."""
    chunk_size = optional_chunk_size(task.data)
    dataset = open_dataset(task.data, task.data_dir)
    group_by = _column_option(task.data, "group_by", dataset)
    metric = _column_option(task.data, "metric", dataset)
    start, end = row_range(dataset.total, task, chunk_size)
    summary = ReportSummary(group_by, metric)
    for number, row in enumerate(dataset.rows(start, end), start):
        summary.add(row, number)
    result = summary.presented()
    if task.slice_index is not None:
        result["slice"] = [start, end]
        # A state without its smallest groups is what merges: keep the summary only when whole.
        whole = len(summary.groups) <= MAX_STATE_GROUPS
        result["merge_state"] = pack_summary(summary) if whole else pack(summary.to_json())
    return result


@dataclass
class Group:
    """Running totals of one group."""

    value: Any
    first: int
    count: int = 0
    measured: int = 0
    total: ExactSum = field(default_factory=ExactSum)

    def merge(self, other: Group) -> None:
        if other.first < self.first:
            self.value, self.first = other.value, other.first
        self.count += other.count
        self.measured += other.measured
        self.total.merge(other.total)


@dataclass
class ReportSummary:
    """Groups of some rows; merges with other rows' groups."""

    group_by: str | None
    metric: str | None
    rows_in: int = 0
    groups: dict[str, Group] = field(default_factory=dict)
    # False once a merge state had to leave out small groups.
    complete: bool = True

    def add(self, row: dict[str, Any], number: int) -> None:
        """Count one row (its 0-based position in the dataset is `number`)."""
        self.rows_in += 1
        value = row.get(self.group_by) if self.group_by else "all"
        key = _group_key(value)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(None if is_empty(value) else value, number)
        group.count += 1
        if self.metric is None or is_empty(row.get(self.metric)):
            return
        number_value = parse_number(row[self.metric])
        if number_value is None:
            raise TaskFailed(
                f"metric {self.metric!r} is not numeric in row {number + 1}: "
                f"{str(row[self.metric])[:40]!r}"
            )
        group.measured += 1
        group.total.add(number_value)

    def merge(self, other: ReportSummary) -> None:
        """Fold another part's groups into these."""
        self.rows_in += other.rows_in
        self.complete = self.complete and other.complete
        for key, group in other.groups.items():
            mine = self.groups.get(key)
            if mine is None:
                self.groups[key] = group
            else:
                mine.merge(group)

    def ordered(self) -> list[Group]:
        # Largest groups first, ties in a stable order, so reports compare across runs.
        return sorted(self.groups.values(), key=lambda g: (-g.count, str(g.value), g.first))

    def presented(self) -> dict[str, Any]:
        """The report as one task over the same rows shows it."""
        ordered = self.ordered()
        result: dict[str, Any] = {
            "group_by": self.group_by,
            "metric": self.metric,
            "rows_in": self.rows_in,
            "groups": [self._group_summary(group) for group in ordered[:MAX_GROUPS]],
            "groups_total": len(ordered),
            "generated_rows": min(len(ordered), MAX_GROUPS),
        }
        if not self.complete:
            result["groups_approximate"] = True
        return result

    def _group_summary(self, group: Group) -> dict[str, Any]:
        summary: dict[str, Any] = {"group": group.value, "count": group.count}
        if self.metric is not None:
            summary["sum"] = group.total.presented(6)
            summary["mean"] = group.total.mean(group.measured) if group.measured else None
        return summary

    def to_json(self) -> dict[str, Any]:
        ordered = self.ordered()
        kept = ordered[:MAX_STATE_GROUPS]
        return {
            "group_by": self.group_by,
            "metric": self.metric,
            "rows_in": self.rows_in,
            "complete": self.complete and len(kept) == len(ordered),
            "groups": {
                _group_key(g.value): [g.value, g.first, g.count, g.measured, g.total.to_json()]
                for g in kept
            },
        }

    @classmethod
    def from_json(cls, packed: Any) -> ReportSummary:
        """From `to_json`'s dict, or the string `pack` made of it."""
        raw = unpack(packed)
        summary = cls(raw["group_by"], raw["metric"], int(raw["rows_in"]))
        summary.complete = bool(raw["complete"])
        for key, (value, first, count, measured, total) in raw["groups"].items():
            summary.groups[key] = Group(
                value, int(first), int(count), int(measured), ExactSum.from_json(total)
            )
        return summary


def _column_option(data: dict[str, Any], option: str, dataset: Dataset) -> str | None:
    column = data.get(option)
    if column is None:
        return None
    if not isinstance(column, str) or not column:
        raise TaskFailed(f"{option!r} must be a column name")
    if dataset.total and column not in dataset.fields:
        raise TaskFailed(f"{option} column {column!r} not found in the data")
    return column


def _group_key(value: Any) -> str:
    """Rows whose values are equal (1, 1.0 and True alike) share a group; empty ones too."""
    if is_empty(value):
        return "null"
    value = canonical(value)
    return json.dumps(["s" if isinstance(value, str) else "n", value])

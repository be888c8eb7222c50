"""The data_processing and mass_data_processing task types.

Input is inline `records` or a file (`input_file` / `dataset`) in DATA_DIR. `operations` run in
the order given (default clean then analyze), row by row:

- clean: strip surrounding whitespace from string keys and values, drop rows whose values are
  all empty (None or blank), drop exact duplicates of an earlier row (the first one is kept);
- transform: rename keys to lower snake_case and turn numeric strings into int or float;
- analyze: per column, the rows that have it, its non-empty and distinct values, and min, max
  and mean when every non-empty value is a number (the last `analyze` is the one reported);
- enrich: add `_row` (the row's 1-based position in the input) and `_filled` (share of non-empty
  fields, 3 decimals).

On a swarm each task takes its part of the rows (app/handlers/datasets.py) and its result carries
a `merge_state` from which app/services/aggregates.py builds the answer of one task over every
row: duplicates are found across the whole dataset (its drop list, computed once per dataset
version), `_row` counts from the start of the input, and the `records` shown are the first
MAX_RESULT_RECORDS of the whole output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.handlers import TaskFailed, TaskInput
from app.handlers.datasets import Dataset, DropSteps, open_dataset, row_range
from app.handlers.summaries import Columns
from app.handlers.values import is_empty, parse_number

Record = dict[str, Any]

DEFAULT_OPERATIONS = ("clean", "analyze")
OUTPUT_FORMATS = ("json", "summary")
# Results stay small enough to store per task however large the input is.
MAX_RESULT_RECORDS = 100
# Rows handled together: enough to make per-column work cheap, few enough to keep memory flat.
_BATCH_ROWS = 2048

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[\W_]+")

__all__ = ["is_empty", "parse_number", "process"]


def process(task: TaskInput) -> dict[str, Any]:
    """Run the requested operations over the task's rows and summarise the outcome."""
    operations = _operations(task.data.get("operations"))
    output_format = _output_format(task.data.get("output_format"))
    chunk_size = optional_chunk_size(task.data)
    dataset = open_dataset(task.data, task.data_dir)
    start, end = row_range(dataset.total, task, chunk_size)
    summary = DataSummary.of_rows(dataset, start, end, operations, output_format)
    result = summary.presented()
    if task.slice_index is not None:
        result["slice"] = [start, end]
        result["merge_state"] = summary.to_json()
    return result


def optional_chunk_size(data: dict[str, Any]) -> int | None:
    """The `chunk_size` a mass-action asked for (rows per bot), or None to split evenly."""
    raw = data.get("chunk_size")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise TaskFailed(f"'chunk_size' must be a whole number of at least 1, got {raw!r}")
    return raw


# ---- one row at a time ---------------------------------------------------------------------


def strip_row(row: Record) -> Record:
    """The row with surrounding whitespace stripped from string keys and values."""
    try:
        # Nearly every row is all strings (a CSV row): strip without asking each value's type.
        return {key.strip(): value.strip() for key, value in row.items()}
    except AttributeError:
        return {
            (key.strip() if type(key) is str else key): (
                value.strip() if type(value) is str else value
            )
            for key, value in row.items()
        }


def is_blank_row(row: Record) -> bool:
    """True when every value is empty (a stripped row)."""
    return all(is_empty(value) for value in row.values())


def transform_row(row: Record) -> Record:
    """Keys in lower snake_case, numeric strings as numbers."""
    return {snake_case(key): _to_number(value) for key, value in row.items()}


def enrich_row(row: Record, number: int) -> Record:
    """The row with `_row` (1-based position in the input) and `_filled` added."""
    if "_row" in row or "_filled" in row:
        values = [value for key, value in row.items() if key != "_row" and key != "_filled"]
    else:
        values = list(row.values())
    try:
        # All strings (nearly every row): the empty ones strip to "".
        filled = len(values) - [value.strip() for value in values].count("")
    except AttributeError:
        filled = sum(not is_empty(value) for value in values)
    share = filled / len(values) if values else 0.0
    return {**row, "_row": number + 1, "_filled": round(share, 3)}


def snake_case(key: Any) -> Any:
    """`First Name`, `firstName` and `first-name` all become `first_name`."""
    if not isinstance(key, str):
        return key
    words = _NON_WORD.sub("_", _CAMEL_BOUNDARY.sub("_", key.strip())).strip("_")
    return words.lower() or key


def row_identity(row: Record, uniform: bool) -> Any:
    """What makes two stripped rows duplicates: equal keys and equal JSON values."""
    values = row.values()
    if all(type(value) is str or value is None for value in values):
        # Strings and None are equal exactly when their JSON is; rows of a CSV file hold their
        # keys in the header's order, so their values alone tell them apart.
        return tuple(values) if uniform else tuple(sorted(row.items()))
    return json.dumps(row, sort_keys=True, default=str)


# ---- whole lists (inline use and tests) ----------------------------------------------------


def clean(records: Iterable[Record]) -> list[Record]:
    """Strip strings, drop all-empty rows and exact duplicates."""
    seen: set[Any] = set()
    cleaned = []
    for row in records:
        stripped = strip_row(row)
        if is_blank_row(stripped):
            continue
        identity = row_identity(stripped, uniform=False)
        if identity in seen:
            continue
        seen.add(identity)
        cleaned.append(stripped)
    return cleaned


def transform(records: Iterable[Record]) -> list[Record]:
    """Rename keys to lower snake_case and convert numeric strings to numbers."""
    return [transform_row(row) for row in records]


def enrich(records: Iterable[Record]) -> list[Record]:
    """Add each row's 1-based position and the share of its fields that are filled."""
    return [enrich_row(row, number) for number, row in enumerate(records)]


def column_stats(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Per column: count, non_empty, distinct, and min/max/mean when it is numeric."""
    columns = Columns()
    columns.add_rows(list(enumerate(records)))
    return columns.summary()


OPERATIONS = ("analyze", "clean", "enrich", "transform")


# ---- a part of a dataset -------------------------------------------------------------------


@dataclass
class DataSummary:
    """What the operations made of some rows, in a form that merges with other rows' summaries."""

    operations: list[str]
    output_format: str
    rows_in: int = 0
    rows_out: int = 0
    columns: Columns | None = None
    # (position in the whole output, row) for the first MAX_RESULT_RECORDS output rows.
    records: list[tuple[int, Record]] | None = field(default_factory=list)

    @classmethod
    def of_rows(
        cls,
        dataset: Dataset,
        start: int,
        end: int,
        operations: tuple[str, ...],
        output_format: str,
    ) -> DataSummary:
        """Run the operations over rows [start, end) of the dataset."""
        summary = cls(list(operations), output_format)
        summary.columns = Columns() if "analyze" in operations else None
        if output_format != "json":
            summary.records = None
        drops = None
        if "clean" in operations:
            drops = dataset.drop_steps(_signature(operations), _drop_computer(operations))
        # Output rows before this part: what the clean steps keep of the rows before it.
        position = drops.kept_before(start) if drops is not None else start
        last_analyze = max((i for i, op in enumerate(operations) if op == "analyze"), default=-1)
        summary.rows_in = max(0, end - start)
        for batch in _batches(dataset.rows(start, end), start):
            analysed: list[tuple[int, Record]] = []
            for number, row in batch:
                out = _run_row(row, number, operations, drops, last_analyze, analysed)
                if out is None:
                    continue
                summary.rows_out += 1
                if summary.records is not None and position < MAX_RESULT_RECORDS:
                    summary.records.append((position, dict(out)))
                position += 1
            if summary.columns is not None and analysed:
                summary.columns.add_rows(analysed, dataset.uniform)
        return summary

    def merge(self, other: DataSummary) -> None:
        """Fold another part's summary into this one."""
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        if self.columns is not None and other.columns is not None:
            self.columns.merge(other.columns)
        if self.records is not None and other.records is not None:
            self.records = sorted(self.records + other.records, key=lambda item: item[0])
            del self.records[MAX_RESULT_RECORDS:]

    def presented(self) -> dict[str, Any]:
        """The result as one task over the same rows shows it."""
        result: dict[str, Any] = {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "operations": list(self.operations),
            "output_format": self.output_format,
        }
        if self.columns is not None:
            result["columns"] = self.columns.summary()
        if self.records is not None:
            result["records"] = [row for _, row in self.records]
            result["records_total"] = self.rows_out
        return result

    def to_json(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "output_format": self.output_format,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "columns": None if self.columns is None else self.columns.to_json(),
            "records": None if self.records is None else [list(item) for item in self.records],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DataSummary:
        return cls(
            operations=list(raw["operations"]),
            output_format=raw["output_format"],
            rows_in=int(raw["rows_in"]),
            rows_out=int(raw["rows_out"]),
            columns=None if raw["columns"] is None else Columns.from_json(raw["columns"]),
            records=None
            if raw["records"] is None
            else [(int(position), row) for position, row in raw["records"]],
        )


def _batches(rows: Iterator[Record], start: int) -> Iterator[list[tuple[int, Record]]]:
    batch: list[tuple[int, Record]] = []
    for number, row in enumerate(rows, start):
        batch.append((number, row))
        if len(batch) == _BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_row(
    row: Record,
    number: int,
    operations: tuple[str, ...],
    drops: DropSteps | None,
    last_analyze: int,
    analysed: list[tuple[int, Record]],
) -> Record | None:
    """The row after every operation, or None if a clean step drops it."""
    cleans = 0
    for place, operation in enumerate(operations):
        if operation == "clean":
            cleans += 1
            row = strip_row(row)
            if drops is not None and drops.steps[number] == cleans:
                return None
        elif operation == "transform":
            row = transform_row(row)
        elif operation == "enrich":
            row = enrich_row(row, number)
        elif place == last_analyze:
            analysed.append((number, row))
    return row


def _signature(operations: tuple[str, ...]) -> str:
    """The operations that decide which rows clean drops: up to the last clean."""
    last_clean = max(i for i, op in enumerate(operations) if op == "clean")
    return ",".join(op for op in operations[: last_clean + 1] if op != "analyze")


def _drop_computer(operations: tuple[str, ...]) -> Callable[[Dataset], bytearray]:
    """How to find, in one pass over a dataset, the clean step that drops each row."""
    steps = tuple(op for op in _signature(operations).split(","))

    def prefix(row: Record, number: int, upto: int) -> Record:
        # The row as clean step `upto` sees it (it passed the steps before).
        cleans = 0
        for operation in steps:
            if operation == "clean":
                cleans += 1
                row = strip_row(row)
                if cleans == upto:
                    return row
            elif operation == "transform":
                row = transform_row(row)
            else:
                row = enrich_row(row, number)
        return row

    def compute(dataset: Dataset) -> bytearray:
        drops = bytearray(dataset.total)
        cleans_total = steps.count("clean")
        # Per clean step: hash of a row's identity -> the first row with it; identities whose
        # hash matched another identity's (a hash collision) are kept whole in `exact`.
        first_by_hash: list[dict[int, int]] = [{} for _ in range(cleans_total)]
        exact: list[dict[Any, int]] = [{} for _ in range(cleans_total)]

        def identity_of_row(number: int, upto: int) -> Any:
            row = next(iter(dataset.rows(number, number + 1)))
            return row_identity(prefix(row, number, upto), dataset.uniform)

        for number, row in enumerate(dataset.rows(0, dataset.total)):
            cleans = 0
            for operation in steps:
                if operation == "transform":
                    row = transform_row(row)
                    continue
                if operation == "enrich":
                    row = enrich_row(row, number)
                    continue
                cleans += 1
                row = strip_row(row)
                if _blank(row):
                    drops[number] = cleans
                    break
                identity = row_identity(row, dataset.uniform)
                key = hash(identity)
                seen = first_by_hash[cleans - 1]
                first = seen.get(key)
                if first is None:
                    seen[key] = number
                    continue
                if identity_of_row(first, cleans) == identity:
                    drops[number] = cleans
                    break
                others = exact[cleans - 1]
                if identity in others:
                    drops[number] = cleans
                    break
                others[identity] = number
        return drops

    return compute


def _blank(row: Record) -> bool:
    values = row.values()
    if all(type(value) is str or value is None for value in values):
        return not any(values)  # stripped: empty strings and None are the falsy ones
    return is_blank_row(row)


def _operations(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_OPERATIONS
    if isinstance(raw, str) or not isinstance(raw, list):
        raise TaskFailed("'operations' must be a list of operation names")
    for operation in raw:
        if operation not in OPERATIONS:
            raise TaskFailed(f"unknown operation {operation!r}; allowed: {', '.join(OPERATIONS)}")
    return tuple(raw)


def _output_format(raw: Any) -> str:
    if raw is None:
        return "json"
    if raw not in OUTPUT_FORMATS:
        raise TaskFailed(f"unknown output_format {raw!r}; allowed: {', '.join(OUTPUT_FORMATS)}")
    return raw


def _to_number(value: Any) -> Any:
    if isinstance(value, str):
        number = parse_number(value)
        if number is not None:
            return number
    return value

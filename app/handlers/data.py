"""The data_processing and mass_data_processing task types.

Input is inline `records` or a file (`input_file` / `dataset`) in DATA_DIR. `operations` run in
the order given (default clean then analyze):

- clean: strip surrounding whitespace from string keys and values, drop rows whose values are
  all empty (None or blank), drop exact duplicate rows (the first one is kept);
- transform: rename keys to lower snake_case and turn numeric strings into int or float;
- analyze: per column, the rows that have it, its non-empty and distinct values, and min, max
  and mean when every non-empty value is a number;
- enrich: add `_row` (1-based position) and `_filled` (share of non-empty fields, 3 decimals).

Every operation builds new rows: records read from a file are shared by the process cache.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.handlers import TaskFailed, TaskInput
from app.handlers.files import data_file_name, input_records, load_records, resolve_data_file

Record = dict[str, Any]

DEFAULT_OPERATIONS = ("clean", "analyze")
OUTPUT_FORMATS = ("json", "summary")
# Results stay small enough to store per task however large the input is.
MAX_RESULT_RECORDS = 100

# No leading zeros: "007" or "02134" are identifiers (codes, zip codes), not quantities.
# The digit cap keeps int() away from its size limit on long digit strings.
_NUMBER = re.compile(r"[+-]?(?:0|[1-9][0-9]{0,30})(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[\W_]+")


def process(task: TaskInput) -> dict[str, Any]:
    """Run the requested operations over the task's records and summarise the outcome."""
    operations = _operations(task.data.get("operations"))
    output_format = _output_format(task.data.get("output_format"))
    name = data_file_name(task.data)
    if "records" in task.data or name is None:
        return _run(input_records(task.data, task.data_dir), operations, output_format)
    path = resolve_data_file(task.data_dir, name)
    stat = path.stat()
    # Every bot of a mass-action asks for the same result; compute it once per process and hand
    # out copies so a caller changing its result cannot change the next bot's.
    result = _run_file(str(path), stat.st_mtime_ns, stat.st_size, operations, output_format)
    return copy.deepcopy(result)


def is_empty(value: Any) -> bool:
    """True for None and blank strings."""
    return value is None or (isinstance(value, str) and not value.strip())


def parse_number(value: Any) -> int | float | None:
    """The number a value holds (a real number or a plain numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = _NUMBER.fullmatch(text)
    if match is None:
        return None
    if match.group(1) is None and match.group(2) is None:
        return int(text)
    number = float(text)
    return number if math.isfinite(number) else None


def clean(records: Iterable[Record]) -> list[Record]:
    """Strip strings, drop all-empty rows and exact duplicates."""
    seen: set[str] = set()
    cleaned = []
    for row in records:
        stripped = {_strip(key): _strip(value) for key, value in row.items()}
        if all(is_empty(value) for value in stripped.values()):
            continue
        identity = json.dumps(stripped, sort_keys=True, default=str)
        if identity in seen:
            continue
        seen.add(identity)
        cleaned.append(stripped)
    return cleaned


def transform(records: Iterable[Record]) -> list[Record]:
    """Rename keys to lower snake_case and convert numeric strings to numbers."""
    return [{snake_case(key): _to_number(value) for key, value in row.items()} for row in records]


def enrich(records: Iterable[Record]) -> list[Record]:
    """Add each row's 1-based position and the share of its fields that are filled."""
    enriched = []
    for position, row in enumerate(records, start=1):
        values = [value for key, value in row.items() if key not in ("_row", "_filled")]
        filled = sum(not is_empty(value) for value in values) / len(values) if values else 0.0
        enriched.append({**row, "_row": position, "_filled": round(filled, 3)})
    return enriched


def column_stats(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Per column: count, non_empty, distinct, and min/max/mean when it is numeric."""
    columns: dict[str, _Column] = {}
    for row in records:
        for key, value in row.items():
            column = columns.get(key)
            if column is None:
                column = columns[key] = _Column()
            column.add(value)
    return {key: column.summary() for key, column in columns.items()}


def snake_case(key: Any) -> Any:
    """`First Name`, `firstName` and `first-name` all become `first_name`."""
    if not isinstance(key, str):
        return key
    words = _NON_WORD.sub("_", _CAMEL_BOUNDARY.sub("_", key.strip())).strip("_")
    return words.lower() or key


class _Column:
    """Running statistics of one column."""

    __slots__ = ("count", "distinct", "high", "low", "non_empty", "numeric", "total")

    def __init__(self) -> None:
        self.count = 0
        self.non_empty = 0
        self.distinct: set[Any] = set()
        self.numeric = True
        self.low: int | float | None = None
        self.high: int | float | None = None
        self.total: int | float = 0

    def add(self, value: Any) -> None:
        self.count += 1
        if is_empty(value):
            return
        self.non_empty += 1
        self.distinct.add(_hashable(value))
        if not self.numeric:
            return
        number = parse_number(value)
        if number is None:
            self.numeric = False
            return
        self.low = number if self.low is None else min(self.low, number)
        self.high = number if self.high is None else max(self.high, number)
        self.total += number

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "count": self.count,
            "non_empty": self.non_empty,
            "distinct": len(self.distinct),
        }
        if self.numeric and self.non_empty:
            summary.update(min=self.low, max=self.high, mean=round(self.total / self.non_empty, 4))
        return summary


_STEPS: dict[str, Callable[[Iterable[Record]], list[Record]]] = {
    "clean": clean,
    "transform": transform,
    "enrich": enrich,
}
OPERATIONS = tuple(sorted([*_STEPS, "analyze"]))


@functools.lru_cache(maxsize=16)
def _run_file(
    path: str, mtime_ns: int, size: int, operations: tuple[str, ...], output_format: str
) -> dict[str, Any]:
    # mtime and size belong to the key so a replaced file gives a fresh result.
    return _run(load_records(Path(path)), operations, output_format)


def _run(records: list[Record], operations: tuple[str, ...], output_format: str) -> dict[str, Any]:
    rows: list[Record] = records
    columns = None
    for operation in operations:
        if operation == "analyze":
            columns = column_stats(rows)
        else:
            rows = _STEPS[operation](rows)
    result: dict[str, Any] = {
        "rows_in": len(records),
        "rows_out": len(rows),
        "operations": list(operations),
        "output_format": output_format,
    }
    if columns is not None:
        result["columns"] = columns
    if output_format == "json":
        # Copies, so a result never aliases the process-wide file cache.
        result["records"] = [dict(row) for row in rows[:MAX_RESULT_RECORDS]]
        result["records_total"] = len(rows)
    return result


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


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _to_number(value: Any) -> Any:
    if isinstance(value, str):
        number = parse_number(value)
        if number is not None:
            return number
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True, default=str)

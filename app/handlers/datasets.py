"""The rows a task works on: its part of a dataset, inline (`records`) or a file in DATA_DIR.

A task of a mass-action knows its part (`slice_index` of `slice_count`): without `chunk_size` the
dataset is split evenly, contiguous ranges whose sizes differ by at most one row; with
`chunk_size`, part i is rows [i * chunk_size, (i + 1) * chunk_size) and may be empty. A task
outside a mass-action takes every row.

Whatever a result must know about rows outside the task's own part is computed once per dataset
version and kept: the offsets index of a file (app/handlers/file_index.py), and the drop lists
below, which say which rows a pipeline's `clean` steps remove as duplicates of earlier rows.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.handlers import TaskFailed, TaskInput
from app.handlers.file_index import (
    Companion,
    FileIndex,
    csv_records,
    index_of,
    locked,
    write_atomically,
)
from app.handlers.files import data_file_name, resolve_data_file

Record = dict[str, Any]
# Kept-row counts are remembered every this many rows, so "rows kept before row i" is quick.
_CHECKPOINT_ROWS = 4096


def row_range(
    total: int, task: TaskInput, chunk_size: int | None, unsplit_chunk_size: int | None = None
) -> tuple[int, int]:
    """The [start, end) rows of the dataset that this task takes.

    `unsplit_chunk_size` is the slice size for tasks assigned before datasets were split evenly
    (a slice index without a count); None gives such tasks the whole dataset.
    """
    index, count = task.slice_index, task.slice_count
    if index is None:
        return 0, total
    if index < 0:
        raise TaskFailed(f"slice index must be 0 or more, got {index}")
    if chunk_size is None and count is None:
        chunk_size = unsplit_chunk_size
    if chunk_size is not None:
        start = index * chunk_size
        return start, max(start, min(start + chunk_size, total))
    if count is None:
        return 0, total
    if not 0 <= index < count:
        raise TaskFailed(f"slice index {index} is outside the {count} parts of the dataset")
    size, larger = divmod(total, count)
    start = index * size + min(index, larger)
    return start, start + size + (1 if index < larger else 0)


class DropSteps:
    """Which clean step (1, 2, ...) removes each row of a dataset; 0 for rows every step keeps."""

    def __init__(self, steps: bytes | bytearray | memoryview) -> None:
        self.steps = steps
        self._kept: list[int] | None = None

    def kept_before(self, row: int) -> int:
        """How many of the rows before `row` no clean step removes."""
        if self._kept is None:
            kept, total = [0], 0
            for start in range(0, len(self.steps), _CHECKPOINT_ROWS):
                total += bytes(self.steps[start : start + _CHECKPOINT_ROWS]).count(0)
                kept.append(total)
            self._kept = kept
        checkpoint, rest = divmod(row, _CHECKPOINT_ROWS)
        start = checkpoint * _CHECKPOINT_ROWS
        return self._kept[checkpoint] + bytes(self.steps[start : start + rest]).count(0)


# Given a dataset, one byte per row: the clean step that removes it, or 0.
DropComputer = Callable[["Dataset"], bytearray]

# Rows handled together: enough to make per-column work cheap, few enough to keep memory flat.
BATCH_ROWS = 2048


@dataclass
class Batch:
    """Consecutive rows: as dicts (header None), or as lists of values in the header's order.

    A CSV file's rows come as lists (every row has the header's fields, missing cells None), which
    lets a pipeline work on values without building a dict per row; rows with surplus cells, or a
    header naming a field twice, come as dicts.
    """

    first: int
    rows: list[Any]
    header: list[str] | None = None

    def numbered(self) -> Iterator[tuple[int, Any]]:
        return enumerate(self.rows, self.first)


def dict_batches(rows: Iterator[Record], start: int) -> Iterator[Batch]:
    """Rows as batches of dicts."""
    batch: list[Record] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH_ROWS:
            yield Batch(start, batch)
            start, batch = start + len(batch), []
    if batch:
        yield Batch(start, batch)


class Dataset(Protocol):
    """Rows by position, without reading the rest."""

    @property
    def name(self) -> str: ...

    @property
    def total(self) -> int: ...

    @property
    def fields(self) -> list[str]:
        """Every field a row may hold, in first-seen order."""
        ...

    @property
    def uniform(self) -> bool:
        """True when every row holds its fields in the same order (CSV), so a row's values
        identify it."""
        ...

    def rows(self, start: int, end: int) -> Iterator[Record]:
        """Rows [start, end)."""
        ...

    def batches(self, start: int, end: int) -> Iterator[Batch]:
        """Rows [start, end) in batches."""
        ...

    def drop_steps(self, signature: str, compute: DropComputer) -> DropSteps:
        """The drop list of a pipeline (named by signature), computed once per dataset version."""
        ...


@dataclass
class InlineDataset:
    """Records given in the task's data."""

    records: list[Record]
    name: str = "records"
    uniform: bool = False
    _drops: dict[str, DropSteps] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.records)

    @functools.cached_property
    def fields(self) -> list[str]:
        names: dict[str, None] = {}
        for row in self.records:
            for key in row:
                names.setdefault(key)
        return list(names)

    def rows(self, start: int, end: int) -> Iterator[Record]:
        return iter(self.records[max(0, start) : end])

    def batches(self, start: int, end: int) -> Iterator[Batch]:
        start = max(0, start)
        for low in range(start, min(end, self.total), BATCH_ROWS):
            yield Batch(low, self.records[low : min(low + BATCH_ROWS, end)])

    def drop_steps(self, signature: str, compute: DropComputer) -> DropSteps:
        if signature not in self._drops:
            self._drops[signature] = DropSteps(compute(self))
        return self._drops[signature]


@dataclass
class FileDataset:
    """A CSV or JSON file in DATA_DIR, read by ranges through its offsets index."""

    index: FileIndex

    @property
    def name(self) -> str:
        return self.index.path.name

    @property
    def total(self) -> int:
        return self.index.rows

    @property
    def fields(self) -> list[str]:
        return self.index.fields

    @property
    def uniform(self) -> bool:
        return self.index.kind == "csv"

    def rows(self, start: int, end: int) -> Iterator[Record]:
        return self.index.read(start, end)

    def batches(self, start: int, end: int) -> Iterator[Batch]:
        header = self.index.header
        if header is None or len(set(header)) != len(header):
            yield from dict_batches(self.index.read(start, end), max(0, start))
            return
        first, rows = max(0, start), []
        for cells in self.index.read_cells(start, end):
            rows.append(cells)
            if len(rows) == BATCH_ROWS:
                yield csv_batch(first, rows, header)
                first, rows = first + len(rows), []
        if rows:
            yield csv_batch(first, rows, header)

    def drop_steps(self, signature: str, compute: DropComputer) -> DropSteps:
        key = (str(self.index.path), self.index.version, signature)
        steps = _FILE_DROPS.get(key)
        if steps is None:
            steps = _file_drops(self.index.stem, signature, lambda: compute(self))
            _FILE_DROPS[key] = steps
            while len(_FILE_DROPS) > 16:
                del _FILE_DROPS[next(iter(_FILE_DROPS))]
        return steps


def csv_batch(first: int, rows: list[list[Any]], header: list[str]) -> Batch:
    """CSV rows (lists of cells, parsed) as a batch: lists in the header's order, missing cells
    None; as dicts when a row has surplus cells or the header names a field twice."""
    width = len(header)
    if len(set(header)) != width or any(len(cells) > width for cells in rows):
        return Batch(first, list(csv_records(rows, header)))
    for cells in rows:
        if len(cells) < width:
            cells.extend([None] * (width - len(cells)))
    return Batch(first, rows, header)


# Drop lists of file versions this process has used: (path, version, signature) -> steps.
_FILE_DROPS: dict[tuple[str, str, str], DropSteps] = {}


def open_dataset(
    data: dict[str, Any], data_dir: Path, companion: Companion | None = None
) -> Dataset:
    """The task's dataset: inline `records`, or the file named by `input_file` / `dataset`.

    A file's index is built on first use; `companion` then sees its rows in the same pass.
    """
    if "records" in data:
        return _inline(data["records"])
    name = data_file_name(data)
    if name is None:
        raise TaskFailed("give the data as 'records', 'input_file' or 'dataset'")
    return FileDataset(index_of(resolve_data_file(data_dir, name), data_dir, companion))


# Tasks of one chunk share their data object: its dataset (and drop lists) is built once.
_INLINE: list[InlineDataset] = []


def _inline(records: Any) -> InlineDataset:
    for dataset in _INLINE:
        if dataset.records is records:
            return dataset
    if not isinstance(records, list) or not all(isinstance(row, dict) for row in records):
        raise TaskFailed("'records' must be a list of objects")
    dataset = InlineDataset(records)
    # Holding the list keeps its identity from being reused by another one.
    _INLINE[:] = [dataset, *_INLINE[:3]]
    return dataset


def drop_file(stem: Path, signature: str) -> Path:
    """Where the drop list of a pipeline (its signature) is kept for the file version `stem`."""
    return (
        stem.parent
        / f"{stem.name}-drop-{hashlib.sha256(signature.encode()).hexdigest()[:16]}.steps"
    )


def _file_drops(stem: Path | None, signature: str, compute: Callable[[], bytearray]) -> DropSteps:
    """A file version's drop list: read from beside its index, or computed once and kept there."""
    if stem is None:
        return DropSteps(compute())
    target = drop_file(stem, signature)
    with locked(stem):
        if not target.exists():
            steps = compute()
            write_atomically(target, lambda handle: handle.write(steps))
    with open(target, "rb") as handle:
        if handle.seek(0, 2) == 0:
            return DropSteps(b"")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return DropSteps(memoryview(mapped))

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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.handlers import TaskFailed, TaskInput
from app.handlers.datasets import Batch, Dataset, csv_batch, drop_file, open_dataset, row_range
from app.handlers.pipeline import Rows, plain_until, run_batch
from app.handlers.summaries import Columns, pack_summary, unpack

Record = dict[str, Any]

DEFAULT_OPERATIONS = ("clean", "analyze")
OUTPUT_FORMATS = ("json", "summary")
# Results stay small enough to store per task however large the input is.
MAX_RESULT_RECORDS = 100


def process(task: TaskInput) -> dict[str, Any]:
    """Run the requested operations over the task's rows and summarise the outcome."""
    operations = _operations(task.data.get("operations"))
    output_format = _output_format(task.data.get("output_format"))
    chunk_size = optional_chunk_size(task.data)
    # The first task to open a file indexes it; its drop list is found in the same pass.
    companion = _DropsWhileIndexing(operations) if "clean" in operations else None
    dataset = open_dataset(task.data, task.data_dir, companion)
    start, end = row_range(dataset.total, task, chunk_size)
    summary = DataSummary.of_rows(dataset, start, end, operations, output_format)
    result = summary.presented()
    if task.slice_index is not None:
        result["slice"] = [start, end]
        result["merge_state"] = pack_summary(summary)
    return result


def optional_chunk_size(data: dict[str, Any]) -> int | None:
    """The `chunk_size` a mass-action asked for (rows per bot), or None to split evenly."""
    raw = data.get("chunk_size")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise TaskFailed(f"'chunk_size' must be a whole number of at least 1, got {raw!r}")
    return raw


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
        keep = None
        position = start
        if "clean" in operations:
            drops = dataset.drop_steps(_signature(operations), _drop_computer(operations))
            steps = drops.steps

            def keep(step: int, numbers: list[int], header: Any, rows: list[Any]) -> list[bool]:
                return [steps[number] != step for number in numbers]

            # Output rows before this part: what the clean steps keep of the rows before it.
            position = drops.kept_before(start)
        columns = summary.columns
        analyse = None
        if columns is not None:

            def analyse(rows: Rows) -> None:
                columns.add_batch(rows.numbers, rows.rows, rows.header, dataset.uniform)

        summary.rows_in = max(0, end - start)
        for batch in dataset.batches(start, end):
            out = run_batch(batch, operations, keep, analyse)
            if summary.records is not None and position < MAX_RESULT_RECORDS:
                shown = Rows(out.numbers, out.rows[: MAX_RESULT_RECORDS - position], out.header)
                summary.records.extend(enumerate(shown.records(), position))
            summary.rows_out += len(out.rows)
            position += len(out.rows)
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
    def from_json(cls, packed: Any) -> DataSummary:
        """From `to_json`'s dict, or the string `pack` made of it."""
        raw = unpack(packed)
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


def _signature(operations: tuple[str, ...]) -> str:
    """The operations that decide which rows clean drops: up to the last clean."""
    last_clean = max(i for i, op in enumerate(operations) if op == "clean")
    return ",".join(op for op in operations[: last_clean + 1] if op != "analyze")


class DropBuilder:
    """Finds, in one pass over a dataset's rows in order, the clean step that drops each row.

    Per clean step, a dict from the hash of a row's identity to the first row with it; when a
    later row's hash is already there, that first row is read again and compared, so a hash
    collision never drops a row (colliding identities are then kept whole in `exact`).
    """

    def __init__(
        self, operations: tuple[str, ...], uniform: bool, batch_at: Callable[[int], Batch]
    ) -> None:
        self.steps = tuple(_signature(operations).split(","))
        self.clean_places = [place for place, op in enumerate(self.steps) if op == "clean"]
        self.uniform, self.batch_at = uniform, batch_at
        self.drops = bytearray()
        self.first_by_hash: list[dict[int, int]] = [{} for _ in self.clean_places]
        self.exact: list[dict[Any, int]] = [{} for _ in self.clean_places]
        self.plain = [plain_until(self.steps, n) for n in range(1, len(self.clean_places) + 1)]

    def feed(self, batch: Batch) -> None:
        """The next rows, in order."""
        self.drops.extend(bytes(len(batch.rows)))
        run_batch(batch, self.steps, self._keep)

    def _identity_at(self, number: int, step: int) -> Any:
        batch = self.batch_at(number)
        row = run_batch(batch, self.steps, None, upto=self.clean_places[step - 1] + 1)
        return row.identities(self.plain[step - 1], self.uniform)[0]

    def _keep(self, step: int, numbers: list[int], header: Any, rows: list[Any]) -> list[bool]:
        batch = Rows(numbers, rows, header)
        identities = batch.identities(self.plain[step - 1], self.uniform)
        first_of = self.first_by_hash[step - 1].setdefault
        others = self.exact[step - 1]
        kept = []
        for number, blank, identity, key in zip(
            numbers,
            batch.blanks(self.plain[step - 1]),
            identities,
            map(hash, identities),
            strict=True,
        ):
            if not blank:
                first = first_of(key, number)
                if first == number:
                    kept.append(True)
                    continue
                # The same hash: the same row, unless (rarely) two rows' hashes collide.
                if self._identity_at(first, step) != identity and identity not in others:
                    others[identity] = number
                    kept.append(True)
                    continue
            self.drops[number] = step
            kept.append(False)
        return kept


def _drop_computer(operations: tuple[str, ...]) -> Callable[[Dataset], bytearray]:
    """How to find, in one pass over a dataset, the clean step that drops each row."""

    def compute(dataset: Dataset) -> bytearray:
        builder = DropBuilder(
            operations, dataset.uniform, lambda n: next(iter(dataset.batches(n, n + 1)))
        )
        for batch in dataset.batches(0, dataset.total):
            builder.feed(batch)
        return builder.drops

    return compute


class _DropsWhileIndexing:
    """A file's drop list built in the pass that indexes it (file_index.Companion)."""

    def __init__(self, operations: tuple[str, ...]) -> None:
        self.operations = operations
        self.builder: DropBuilder | None = None

    def target(self, stem: Any) -> Any:
        return drop_file(stem, _signature(self.operations))

    def feed(
        self, first: int, rows: list[list[str]], header: list[str], read: Callable[[int], list[str]]
    ) -> None:
        if self.builder is None:
            self.builder = DropBuilder(
                self.operations, True, lambda n: csv_batch(n, [read(n)], header)
            )
        self.builder.feed(csv_batch(first, rows, header))

    def result(self) -> bytes:
        return bytes(self.builder.drops) if self.builder is not None else b""


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

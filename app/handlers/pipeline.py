"""The data operations, applied to a batch of rows: clean, transform, enrich (and what analyze sees).

Rows come as dicts, or (from a CSV file) as lists of values in a header's order; both give the
same rows, the lists without building a dict per row. A clean step keeps or drops rows by a
`Keep` decision, so the same code serves a task (which asks its dataset's drop list) and the
one pass that builds the drop list (which asks which rows it has seen before).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.handlers.datasets import Batch
from app.handlers.values import is_empty, parse_number

Record = dict[str, Any]

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[\W_]+")
_ENRICHED = ("_row", "_filled")

# At clean step k: (k, row numbers, header or None, stripped rows) -> which rows stay.
Keep = Callable[[int, list[int], "list[Any] | None", list[Any]], list[bool]]


@dataclass
class Rows:
    """A batch after some operations: its surviving rows and their numbers in the dataset."""

    numbers: list[int]
    rows: list[Any]
    # The rows' fields when they are lists; None when they are dicts.
    header: list[Any] | None

    def records(self) -> list[Record]:
        """The rows as dicts."""
        if self.header is None:
            return self.rows
        return [dict(zip(self.header, row, strict=True)) for row in self.rows]

    def identities(self, plain: bool, uniform: bool) -> list[Any]:
        """What makes rows duplicates (see `row_identity`); `plain`: every value a str or None;
        `uniform`: dict rows hold their keys in one order (a CSV file's)."""
        if self.header is None:
            return [row_identity(row, uniform) for row in self.rows]
        if plain:
            return [tuple(row) for row in self.rows]
        header = self.header
        return [
            tuple(row)
            if all(type(value) is str or value is None for value in row)
            else json.dumps(dict(zip(header, row, strict=True)), sort_keys=True, default=str)
            for row in self.rows
        ]

    def blanks(self, plain: bool) -> list[bool]:
        """Which rows have only empty values."""
        if self.header is None:
            return [all(is_empty(value) for value in row.values()) for row in self.rows]
        if plain:
            return [not any(row) for row in self.rows]
        return [all(is_empty(value) for value in row) for row in self.rows]


def run_batch(
    batch: Batch,
    operations: tuple[str, ...],
    keep: Keep | None,
    analyse: Callable[[Rows], None] | None = None,
    upto: int | None = None,
) -> Rows:
    """The batch through `operations` (the first `upto` of them); the last analyze sees its rows."""
    current = Rows(
        list(range(batch.first, batch.first + len(batch.rows))), batch.rows, batch.header
    )
    last_analyze = max((i for i, op in enumerate(operations) if op == "analyze"), default=-1)
    cleans = 0
    for place, operation in enumerate(operations[:upto]):
        if operation == "clean":
            cleans += 1
            current = _strip(current)
            if keep is not None:
                current = _select(
                    current, keep(cleans, current.numbers, current.header, current.rows)
                )
        elif operation == "transform":
            current = _transform(current)
        elif operation == "enrich":
            current = _enrich(current, stripped=cleans > 0)
        elif place == last_analyze and analyse is not None:
            analyse(current)
    return current


def plain_until(operations: tuple[str, ...], clean_step: int) -> bool:
    """Whether a CSV row still holds only strings and None when it reaches the given clean."""
    cleans = 0
    for operation in operations:
        if operation in ("transform", "enrich"):
            return False
        if operation == "clean":
            cleans += 1
            if cleans == clean_step:
                return True
    return True


# ---- one row at a time -------------------------------------------------------------------------


def strip_row(row: Record) -> Record:
    """The row with surrounding whitespace stripped from string keys and values."""
    try:
        # Nearly every row is all strings: strip without asking each value's type.
        return {key.strip(): value.strip() for key, value in row.items()}
    except AttributeError:
        return {
            (key.strip() if type(key) is str else key): (
                value.strip() if type(value) is str else value
            )
            for key, value in row.items()
        }


def transform_row(row: Record) -> Record:
    """Keys in lower snake_case, numeric strings as numbers."""
    return {snake_case(key): to_number(value) for key, value in row.items()}


def enrich_row(row: Record, number: int) -> Record:
    """The row with `_row` (1-based position in the input) and `_filled` added."""
    if "_row" in row or "_filled" in row:
        values = [value for key, value in row.items() if key not in _ENRICHED]
    else:
        values = list(row.values())
    return {**row, "_row": number + 1, "_filled": _filled(values)}


def row_identity(row: Record, uniform: bool) -> Any:
    """What makes two stripped rows duplicates: equal keys and equal JSON values."""
    values = row.values()
    if all(type(value) is str or value is None for value in values):
        # Strings and None are equal exactly when their JSON is; rows of a CSV file hold their
        # keys in the header's order, so their values alone tell them apart.
        return tuple(values) if uniform else tuple(sorted(row.items()))
    return json.dumps(row, sort_keys=True, default=str)


def snake_case(key: Any) -> Any:
    """`First Name`, `firstName` and `first-name` all become `first_name`."""
    if not isinstance(key, str):
        return key
    words = _NON_WORD.sub("_", _CAMEL_BOUNDARY.sub("_", key.strip())).strip("_")
    return words.lower() or key


def to_number(value: Any) -> Any:
    """A numeric string as its number; anything else unchanged."""
    if isinstance(value, str):
        number = parse_number(value)
        if number is not None:
            return number
    return value


def _filled(values: Sequence[Any], stripped: bool = False) -> float:
    """The share of non-empty values, 3 decimals (`stripped`: no value is a blank string)."""
    if not values:
        return 0.0
    if stripped:
        filled = len(values) - values.count("") - values.count(None)
        return round(filled / len(values), 3)
    try:
        # All strings (nearly every row): the empty ones strip to "".
        filled = len(values) - [value.strip() for value in values].count("")
    except AttributeError:
        filled = sum(not is_empty(value) for value in values)
    return round(filled / len(values), 3)


# ---- a batch at a time -------------------------------------------------------------------------


def _select(rows: Rows, keep: list[bool]) -> Rows:
    if all(keep):
        return rows
    chosen = [i for i, kept in enumerate(keep) if kept]
    return Rows([rows.numbers[i] for i in chosen], [rows.rows[i] for i in chosen], rows.header)


def _fields(keys: list[Any]) -> tuple[list[Any], list[int] | None]:
    """Keys renamed alike merge as in a dict: the first one's place, the last one's value."""
    if len(set(keys)) == len(keys):
        return keys, None
    last = {key: place for place, key in enumerate(keys)}
    unique = list(dict.fromkeys(keys))
    return unique, [last[key] for key in unique]


def _rekeyed(rows: Rows, keys: list[Any], values: list[Any]) -> Rows:
    header, places = _fields(keys)
    if places is not None:
        values = [tuple(row[i] for i in places) for row in values]
    return Rows(rows.numbers, values, header)


def _strip(rows: Rows) -> Rows:
    if rows.header is None:
        return Rows(rows.numbers, [strip_row(row) for row in rows.rows], None)
    keys = [key.strip() if type(key) is str else key for key in rows.header]
    strip = str.strip
    try:
        # Tuples built by map(): about twice as fast as a list comprehension per row.
        values: list[Any] = [tuple(map(strip, row)) for row in rows.rows]
    except TypeError:  # None for a missing cell, or numbers
        values = [
            tuple(value.strip() if type(value) is str else value for value in row)
            for row in rows.rows
        ]
    return _rekeyed(rows, keys, values)


def _transform(rows: Rows) -> Rows:
    if rows.header is None:
        return Rows(rows.numbers, [transform_row(row) for row in rows.rows], None)
    keys = [snake_case(key) for key in rows.header]
    return _rekeyed(rows, keys, [tuple(map(to_number, row)) for row in rows.rows])


def _enrich(rows: Rows, stripped: bool) -> Rows:
    if rows.header is None:
        dicts = [
            enrich_row(row, number) for number, row in zip(rows.numbers, rows.rows, strict=True)
        ]
        return Rows(rows.numbers, dicts, None)
    header = rows.header
    if "_row" not in header and "_filled" not in header:
        values = [
            (*row, number + 1, _filled(row, stripped))
            for number, row in zip(rows.numbers, rows.rows, strict=True)
        ]
        return Rows(rows.numbers, values, [*header, "_row", "_filled"])
    # Enriched before: the values stay in their places, the others are counted.
    others = [place for place, key in enumerate(header) if key not in _ENRICHED]
    new_header = list(header)
    for key in _ENRICHED:
        if key not in new_header:
            new_header.append(key)
    row_at, filled_at = new_header.index("_row"), new_header.index("_filled")
    enriched: list[Any] = []
    for number, row in zip(rows.numbers, rows.rows, strict=True):
        out = list(row) + [None] * (len(new_header) - len(row))
        out[row_at] = number + 1
        out[filled_at] = _filled([row[place] for place in others], stripped)
        enriched.append(tuple(out))
    return Rows(rows.numbers, enriched, new_header)

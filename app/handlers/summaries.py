"""Running summaries that merge: the pieces a task's answer is built from.

A summary folds values in any order and merges with another summary of other values, and the
merged summary is the one a single pass over all the values would have built. That is what lets
a swarm split a dataset and still give the answer of one task over the whole file:

- ExactSum adds integers and floats without rounding (floats are binary fractions), so a mean
  does not depend on the order of additions;
- Distinct counts distinct values exactly up to EXACT_DISTINCT_LIMIT, then as a HyperLogLog
  sketch (labelled approximate); the sketch of a union is the union of the sketches, so the
  estimate too is the same however the values were split;
- Column keeps count, non-empty, distinct, min, max and mean of one column, ties between equal
  numbers (1 and 1.0) broken the same way whatever the order.

Summaries turn into JSON (`to_json`) so a task's result can carry them, and back (`from_json`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import operator
import zlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from app.handlers.values import NUMBER, is_empty, parse_number

# Distinct values kept one by one; past this, a sketch (about 0.8% standard error) takes over.
EXACT_DISTINCT_LIMIT = 4096
_HLL_BITS = 14
_HLL_REGISTERS = 1 << _HLL_BITS
_HLL_ALPHA = 0.7213 / (1 + 1.079 / _HLL_REGISTERS)
_blake2b = hashlib.blake2b
# The largest summary unpacked: a part's lists its distinct values (at most EXACT_DISTINCT_LIMIT
# per column) or a sketch, far below this.
_MAX_UNPACKED_BYTES = 64 * 1024 * 1024

Number = int | float
# Joins a part's distinct texts into one string in its state (see Distinct.to_json), unless a
# text holds it: a tab, which JSON writes in two bytes (a control character would take six).
_TEXT_SEPARATOR = "\t"
_PLAIN = {str, type(None)}


def pack(state: dict[str, Any]) -> str:
    """A summary's JSON, compressed into one string for a task's result.

    A part's summary lists its distinct values, so it is about as large as its rows; stored as
    one compressed string it costs the database a fraction of parsing thousands of JSON values.
    """
    raw = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )
    return "z1:" + base64.b64encode(zlib.compress(raw, 1)).decode("ascii")


class Packed(str):
    """A packed summary that, in the process that packed it, still holds the summary itself.

    A worker folds the results its own tasks have just produced (app/services/aggregates.py);
    taking the summary from here spares it inflating and parsing every part's state again
    (about a fifth of the fold of a 200-part chunk). It is taken at most once, because a fold
    merges other summaries into the ones it takes: a second fold of the same result unpacks the
    string, which never changes.
    """

    summary: Any


def pack_summary(summary: Any) -> Packed:
    """`pack` of a summary's JSON, keeping the summary for one `take_summary` in this process."""
    packed = Packed(pack(summary.to_json()))
    packed.summary = summary
    return packed


def take_summary(packed: Any) -> Any:
    """The summary `pack_summary` kept in `packed`, once; None for any other value."""
    if type(packed) is not Packed:
        return None
    return packed.__dict__.pop("summary", None)


def unpack(packed: Any) -> dict[str, Any]:
    """The summary JSON that `pack` packed (a plain dict is taken as it is)."""
    if isinstance(packed, dict):
        return packed
    if not isinstance(packed, str) or not packed.startswith("z1:"):
        raise ValueError("not a packed summary")
    # A result can come from a manual completion too: never inflate more than a summary can be.
    inflater = zlib.decompressobj()
    raw = inflater.decompress(base64.b64decode(packed[3:]), _MAX_UNPACKED_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("packed summary too large")
    state = json.loads(raw.decode("utf-8", "surrogatepass"))
    if not isinstance(state, dict):
        raise ValueError("not a packed summary")
    return state


class ExactSum:
    """A sum of ints and floats with no rounding: a numerator over a power of two."""

    __slots__ = ("numerator", "shift", "has_float")

    def __init__(self, numerator: int = 0, shift: int = 0, has_float: bool = False) -> None:
        self.numerator, self.shift, self.has_float = numerator, shift, has_float

    def add(self, value: Number, times: int = 1) -> None:
        """Add value, `times` times."""
        if isinstance(value, int):
            self.numerator += (value * times) << self.shift
            return
        self.has_float = True
        top, bottom = value.as_integer_ratio()
        self._add_fraction(top * times, bottom.bit_length() - 1)

    def add_counted(self, integers: int, floats: list[tuple[float, int]]) -> None:
        """Add a sum of integers, and floats each taken `times` times ((value, times) pairs)."""
        self.numerator += integers << self.shift
        if not floats:
            return
        self.has_float = True
        ratios = [(value.as_integer_ratio(), times) for value, times in floats]
        shift = max(bottom.bit_length() for (_, bottom), _ in ratios) - 1
        self._add_fraction(
            sum(
                (top * times) << (shift + 1 - bottom.bit_length())
                for (top, bottom), times in ratios
            ),
            shift,
        )

    def merge(self, other: ExactSum) -> None:
        """Add another sum to this one."""
        self.has_float = self.has_float or other.has_float
        self._add_fraction(other.numerator, other.shift)

    def _add_fraction(self, numerator: int, shift: int) -> None:
        if shift > self.shift:
            self.numerator <<= shift - self.shift
            self.shift = shift
        self.numerator += numerator << (self.shift - shift)

    def presented(self, digits: int) -> Number:
        """The sum as the answer shows it: an int for ints only, else a float rounded to digits."""
        if not self.has_float:
            return self.numerator >> self.shift
        # int / int is correctly rounded: the float nearest the exact sum.
        return round(self.numerator / (1 << self.shift), digits)

    def mean(self, count: int, digits: int = 4) -> float:
        """The sum divided by count, rounded to digits (0.0 for no values)."""
        return round(self.numerator / (count << self.shift), digits) if count else 0.0

    def to_json(self) -> list[Any]:
        # The numerator may pass 2**53: kept as text so no JSON reader rounds it.
        return [str(self.numerator), self.shift, self.has_float]

    @classmethod
    def from_json(cls, raw: list[Any]) -> ExactSum:
        return cls(int(raw[0]), int(raw[1]), bool(raw[2]))


def canonical(value: Any) -> Any:
    """The value as distinct counting sees it: equal values (1, 1.0, True) become one."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (str, int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _sketch_hash(value: Any) -> int:
    if type(value) is str:
        data = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, int):
        # A leading NUL keeps numbers apart from the strings that spell them.
        data = b"\x00i" + str(value).encode()
    else:
        data = b"\x00f" + repr(value).encode()
    return int.from_bytes(_blake2b(data, digest_size=8).digest(), "big")


_encode_text = functools.partial(str.encode, encoding="utf-8", errors="surrogatepass")
_hash8 = functools.partial(_blake2b, digest_size=8)
_digest = operator.methodcaller("digest")
_INT_MARK = b"\x00i".__add__


def _sketch_hashes(values: Iterable[Any]) -> list[int]:
    """`_sketch_hash` of every value: chains of map() when they are all strings or all ints
    (a sketched column nearly always is), a third cheaper per value than one call each."""
    values = values if isinstance(values, (list, set, frozenset, tuple)) else list(values)
    try:
        return list(map(int.from_bytes, map(_digest, map(_hash8, map(_encode_text, values)))))
    except TypeError:  # not all strings
        pass
    if all(type(value) is int for value in values):
        data = map(_INT_MARK, map(str.encode, map(int.__repr__, values)))
        return list(map(int.from_bytes, map(_digest, map(_hash8, data))))
    return list(map(_sketch_hash, values))


class Distinct:
    """How many distinct values: exact while few, a HyperLogLog sketch past the limit."""

    __slots__ = ("values", "registers")

    def __init__(self) -> None:
        self.values: set[Any] | None = set()
        self.registers: bytearray | None = None

    def add_many(self, values: Iterable[Any]) -> None:
        """Count canonical values (see `canonical`)."""
        if self.values is not None:
            self.values.update(values)
            if len(self.values) > EXACT_DISTINCT_LIMIT:
                self._to_sketch()
            return
        self._sketch(values)

    def merge(self, other: Distinct) -> None:
        """Count the other's values too."""
        if other.values is not None:
            self.add_many(other.values)
            return
        if self.values is not None:
            self._to_sketch()
        assert self.registers is not None and other.registers is not None
        self.registers = bytearray(map(max, self.registers, other.registers))

    def _to_sketch(self) -> None:
        values, self.values = self.values or set(), None
        self.registers = bytearray(_HLL_REGISTERS)
        self._sketch(values)

    def _sketch(self, values: Iterable[Any]) -> None:
        registers = self.registers
        assert registers is not None
        rest_bits = 64 - _HLL_BITS
        mask = (1 << rest_bits) - 1
        top = rest_bits + 1
        hashed = _sketch_hashes(values)
        # Two passes of map() and one plain loop: every value of a large column passes here.
        places = map(rest_bits.__rrshift__, hashed)
        for register, low in zip(places, map(mask.__and__, hashed), strict=True):
            rank = top - low.bit_length()
            if rank > registers[register]:
                registers[register] = rank

    @property
    def approximate(self) -> bool:
        return self.values is None

    def count(self) -> int:
        """The number of distinct values (an estimate once approximate)."""
        if self.values is not None:
            return len(self.values)
        assert self.registers is not None
        m = _HLL_REGISTERS
        estimate = _HLL_ALPHA * m * m / sum(2.0**-rank for rank in self.registers)
        zeros = self.registers.count(0)
        if estimate <= 2.5 * m and zeros:
            estimate = m * math.log(m / zeros)
        return int(round(estimate))

    def to_json(self) -> dict[str, Any]:
        if self.values is not None:
            values = list(self.values)
            try:
                joined = _TEXT_SEPARATOR.join(values)
            except TypeError:  # not all strings
                return {"values": values}
            # One string rather than a list of them: a part's state is mostly its distinct
            # values, and encoding (and decoding) one string is several times quicker.
            if joined.count(_TEXT_SEPARATOR) == len(values) - 1 and len(values) > 1:
                return {"texts": joined}
            return {"values": values}
        assert self.registers is not None
        return {"sketch": base64.b64encode(bytes(self.registers)).decode()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Distinct:
        distinct = cls()
        if "sketch" in raw:
            distinct.values = None
            distinct.registers = bytearray(base64.b64decode(raw["sketch"]))
        elif "texts" in raw:
            distinct.values = set(raw["texts"].split(_TEXT_SEPARATOR))
        else:
            distinct.values = set(raw["values"])
        return distinct


def _order(value: Number) -> tuple[Number, int, float]:
    # Equal numbers (1, 1.0, -0.0, 0.0) ordered by type and sign, so min and max pick the same
    # one whichever arrives first.
    if isinstance(value, float):
        return (value, 1, math.copysign(1.0, value))
    return (value, 0, 0.0)


def _extreme(numbers: list[Number], found: Number, pick: Any) -> Number:
    """Among the numbers equal to `found` (min or max), the one `pick` prefers."""
    ties = [number for number in numbers if number == found]
    chosen = ties[0]
    for number in ties[1:]:
        chosen = pick(chosen, number)
    return chosen


def lower(a: Number | None, b: Number | None) -> Number | None:
    """The smaller number (None counts as no number)."""
    if a is None or b is None:
        return b if a is None else a
    return a if _order(a) <= _order(b) else b


def higher(a: Number | None, b: Number | None) -> Number | None:
    """The larger number (None counts as no number)."""
    if a is None or b is None:
        return b if a is None else a
    return a if _order(a) >= _order(b) else b


class Column:
    """Running statistics of one column: count, non-empty, distinct, and min/max/mean if numeric."""

    __slots__ = ("count", "non_empty", "distinct", "numeric", "low", "high", "total", "first")

    def __init__(self, first: tuple[int, int]) -> None:
        self.count = 0
        self.non_empty = 0
        self.distinct = Distinct()
        self.numeric = True
        self.low: Number | None = None
        self.high: Number | None = None
        self.total = ExactSum()
        # (row, place in the row) where the column first appears: orders the columns.
        self.first = first

    def add_values(self, values: list[Any]) -> None:
        """Fold a batch of this column's values (None and blank strings count as empty)."""
        self.count += len(values)
        try:
            counts = Counter(values)
            kinds = set(map(type, counts))
        except TypeError:  # lists or objects among the values
            kinds = {list}
        if kinds <= _PLAIN:
            self._add_strings(counts)
        elif kinds == {int}:
            self._add_integers(counts)
        elif kinds == {float}:
            self._add_floats(counts)
        else:
            # Keyed by type as well, so 1 and 1.0 are told apart for min, max and sums.
            self._add_mixed(Counter(_typed(value) for value in values))

    def _add_strings(self, counts: Counter[Any]) -> None:
        # Comprehensions and map() rather than one loop: this runs for every distinct value of
        # every column of every batch.
        found = [key for key in counts if key and not key.isspace()]  # not None, "" or blank
        if len(found) == len(counts):
            self.non_empty += counts.total()
        else:
            self.non_empty += sum(map(counts.__getitem__, found))
        self.distinct.add_many(found)
        if not self.numeric or not found:
            return
        if NUMBER.fullmatch(found[0].strip()) is None:
            # Most columns that are not numbers show it at once: spare them the whole batch.
            self.numeric = False
            return
        texts = [key.strip() for key in found]
        matches = list(map(NUMBER.fullmatch, texts))
        if None in matches:
            self.numeric = False
            return
        numbers: list[Number] = [
            int(text) if match.lastindex is None else float(text)  # type: ignore[union-attr]
            for text, match in zip(texts, matches, strict=True)
        ]
        if not all(map(math.isfinite, numbers)):
            self.numeric = False
            return
        times = list(map(counts.__getitem__, found))
        integers = sum(
            number * n for number, n in zip(numbers, times, strict=True) if type(number) is int
        )
        floats = [
            (number, n) for number, n in zip(numbers, times, strict=True) if type(number) is float
        ]
        self._add_numbers(True, numbers, integers, floats)

    def _add_floats(self, counts: Counter[Any]) -> None:
        self.non_empty += counts.total()
        numbers = list(counts)
        self.distinct.add_many([int(x) if x.is_integer() else x for x in numbers])
        if not self.numeric:
            return
        if not all(map(math.isfinite, numbers)):
            self.numeric = False
            return
        self._add_numbers(True, numbers, 0, list(counts.items()))

    def _add_integers(self, counts: Counter[Any]) -> None:
        self.non_empty += counts.total()
        numbers = list(counts)
        self._add_numbers(
            self.numeric, numbers, sum(number * times for number, times in counts.items()), []
        )
        self.distinct.add_many(numbers)

    def _add_mixed(self, counts: Counter[Any]) -> None:
        found = []
        numeric = self.numeric
        numbers: list[Number] = []
        integers = 0
        floats: list[tuple[float, int]] = []
        for key, times in counts.items():
            value = key[-1] if type(key) is tuple else key
            if is_empty(value):
                continue
            found.append(canonical(value))
            self.non_empty += times
            if not numeric:
                continue
            number = parse_number(value)
            if number is None:
                numeric = False
            elif type(number) is int:
                integers += number * times
                numbers.append(number)
            else:
                floats.append((number, times))
                numbers.append(number)
        self._add_numbers(numeric, numbers, integers, floats)
        self.distinct.add_many(found)

    def _add_numbers(
        self,
        numeric: bool,
        numbers: list[Number],
        integers: int,
        floats: list[tuple[float, int]],
    ) -> None:
        self.numeric = numeric
        if numeric and numbers:
            self.low = lower(self.low, _extreme(numbers, min(numbers), lower))
            self.high = higher(self.high, _extreme(numbers, max(numbers), higher))
            self.total.add_counted(integers, floats)

    def merge(self, other: Column) -> None:
        """Fold another column's statistics (of other rows) into this one."""
        self.count += other.count
        self.non_empty += other.non_empty
        self.distinct.merge(other.distinct)
        self.numeric = self.numeric and other.numeric
        self.low = lower(self.low, other.low)
        self.high = higher(self.high, other.high)
        self.total.merge(other.total)
        self.first = min(self.first, other.first)

    def summary(self) -> dict[str, Any]:
        """What the answer shows for the column."""
        summary: dict[str, Any] = {
            "count": self.count,
            "non_empty": self.non_empty,
            "distinct": self.distinct.count(),
        }
        if self.distinct.approximate:
            summary["distinct_approximate"] = True
        if self.numeric and self.non_empty:
            summary.update(min=self.low, max=self.high, mean=self.total.mean(self.non_empty))
        return summary

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "non_empty": self.non_empty,
            "distinct": self.distinct.to_json(),
            "numeric": self.numeric,
            "min": self.low,
            "max": self.high,
            "sum": self.total.to_json(),
            "first": list(self.first),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Column:
        column = cls((int(raw["first"][0]), int(raw["first"][1])))
        column.count, column.non_empty = int(raw["count"]), int(raw["non_empty"])
        column.distinct = Distinct.from_json(raw["distinct"])
        column.numeric = bool(raw["numeric"])
        column.low, column.high = raw["min"], raw["max"]
        column.total = ExactSum.from_json(raw["sum"])
        return column


def _typed(value: Any) -> Any:
    if type(value) is str or value is None:
        return value
    if isinstance(value, (int, float)):
        return (type(value).__name__, value)
    # Lists and objects: their JSON stands for them (as distinct counting has always done).
    return ("json", json.dumps(value, sort_keys=True, default=str))


class Columns:
    """Column statistics of many rows, keyed by column name."""

    def __init__(self) -> None:
        self.columns: dict[str, Column] = {}

    def add_rows(self, rows: list[tuple[int, dict[str, Any]]], uniform: bool = False) -> None:
        """Fold (row number, row) pairs; `uniform`: rows with as many keys hold the same keys in
        the same order (rows of one CSV file), so they are read column by column."""
        if uniform:
            self._add_uniform(rows)
            return
        batches: dict[str, list[Any]] = {}
        for number, row in rows:
            for place, (key, value) in enumerate(row.items()):
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = []
                    if key not in self.columns:
                        self.columns[key] = Column((number, place))
                batch.append(value)
        for key, batch in batches.items():
            self.columns[key].add_values(batch)

    def add_batch(
        self, numbers: list[int], rows: list[Any], header: list[Any] | None, uniform: bool
    ) -> None:
        """Fold rows numbered `numbers`: dicts (header None), or lists in the header's order."""
        if header is None:
            self.add_rows(list(zip(numbers, rows, strict=True)), uniform)
            return
        if not rows:
            return
        for place, (key, values) in enumerate(zip(header, zip(*rows, strict=True), strict=True)):
            column = self.columns.get(key)
            if column is None:
                column = self.columns[key] = Column((numbers[0], place))
            else:
                column.first = min(column.first, (numbers[0], place))
            column.add_values(list(values))

    def _add_uniform(self, rows: list[tuple[int, dict[str, Any]]]) -> None:
        by_width: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for pair in rows:
            by_width.setdefault(len(pair[1]), []).append(pair)
        for group in by_width.values():
            number, first_row = group[0]
            columns = zip(*(row.values() for _, row in group), strict=True)
            for place, (key, values) in enumerate(zip(first_row, columns, strict=True)):
                column = self.columns.get(key)
                if column is None:
                    column = self.columns[key] = Column((number, place))
                else:
                    column.first = min(column.first, (number, place))
                column.add_values(list(values))

    def merge(self, other: Columns) -> None:
        """Fold another's columns (of other rows) into these."""
        for key, column in other.columns.items():
            mine = self.columns.get(key)
            if mine is None:
                self.columns[key] = column
            else:
                mine.merge(column)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per column, in the order the columns first appear in the data."""
        ordered = sorted(self.columns.items(), key=lambda item: item[1].first)
        return {key: column.summary() for key, column in ordered}

    def to_json(self) -> dict[str, Any]:
        return {key: column.to_json() for key, column in self.columns.items()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Columns:
        columns = cls()
        columns.columns = {key: Column.from_json(value) for key, value in raw.items()}
        return columns

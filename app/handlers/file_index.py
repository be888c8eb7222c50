"""Offsets indexes of data files, so a task reads only its own rows of a large file.

The index of a file version (its path, size and modification time) is built once, by whichever
process needs it first, under a file lock, and kept in an index directory: a small JSON header
(format, header row, field names, row count) and then one 64-bit byte offset per row, plus the end.
Processes map it into memory, so finding rows [start, end) costs two lookups and one read of just
those bytes, whatever the size of the file.

Rows come out exactly as a whole-file read gives them: csv.DictReader's rules for CSV (header
row, `_extra` for surplus cells, None for missing ones, blank lines skipped), and the elements of
the list (or of `{"records": [...]}`) for JSON.

Drop lists (see `Dataset.drop_steps` in app/handlers/datasets.py) are kept beside the index of the
version they belong to; building a new version's index removes the files of older versions.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import mmap
import os
import re
import struct
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from app.handlers import TaskFailed

SUPPORTED_SUFFIXES = (".csv", ".json")
INDEX_DIR_NAME = ".index"
_MAGIC = b"ORIDX001"
_OFFSET = struct.Struct("<q")
# Read in blocks this large while indexing, so memory stays flat however large the file is.
_BLOCK_BYTES = 1 << 20
# Rows decoded at once when reading a range: memory stays flat for a task over a whole file.
_READ_ROWS = 8192
_COMPANION_ROWS = 2048
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()

Record = dict[str, Any]


@dataclass(frozen=True)
class FileIndex:
    """Where every row of one version of a data file starts."""

    path: Path
    # Size and modification time: a replaced file is another version.
    version: str
    kind: str  # "csv" or "json"
    rows: int
    # CSV: the header row. JSON: None.
    header: list[str] | None
    # Every field a row may hold, in first-seen order.
    fields: list[str]
    # rows + 1 offsets: row i is bytes [offsets[i], offsets[i + 1]).
    offsets: memoryview
    # Where the index lives; drop lists of this version sit beside it.
    stem: Path | None

    def read(self, start: int, end: int) -> Iterator[Record]:
        """Rows [start, end) of the file, reading only their bytes, a block of rows at a time."""
        for text in self._blocks(start, end):
            if self.kind == "csv":
                assert self.header is not None
                yield from csv_records(self._cells(text), self.header)
            else:
                yield from _json_records(text, self.path.name)

    def read_cells(self, start: int, end: int) -> Iterator[list[str]]:
        """Rows [start, end) of a CSV file as lists of cells, as the csv module parses them."""
        for text in self._blocks(start, end):
            yield from self._cells(text)

    def _blocks(self, start: int, end: int) -> Iterator[str]:
        start, end = max(0, start), min(end, self.rows)
        if start >= end:
            return
        with _open_data(self.path) as handle:
            for low_row in range(start, end, _READ_ROWS):
                high_row = min(low_row + _READ_ROWS, end)
                low, high = self.offsets[low_row], self.offsets[high_row]
                handle.seek(low)
                try:
                    yield handle.read(high - low).decode("utf-8")
                except UnicodeDecodeError:
                    raise TaskFailed(f"data file {self.path.name!r} is not UTF-8 text") from None

    def _cells(self, text: str) -> Iterator[list[str]]:
        try:
            for cells in csv.reader(io.StringIO(text, newline="")):
                if cells:  # blank lines are no rows
                    yield cells
        except csv.Error as exc:
            raise TaskFailed(f"data file {self.path.name!r} is not valid CSV: {exc}") from None


class Companion(Protocol):
    """Something worth computing in the same pass that indexes a CSV file (a drop list)."""

    def target(self, stem: Path) -> Path:
        """Where its result is kept, beside the index of the file version `stem` names."""
        ...

    def feed(
        self, first: int, rows: list[list[str]], header: list[str], read: Callable[[int], list[str]]
    ) -> None:
        """Rows first, first + 1, ... as cells; `read(n)` parses an earlier row n again."""
        ...

    def result(self) -> bytes:
        """What to keep."""
        ...


def index_of(path: Path, data_dir: Path, companion: Companion | None = None) -> FileIndex:
    """The offsets index of the file's current version, built now if no process has built it.

    When this call builds it, `companion` (if any) is fed every row in the same pass.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise TaskFailed(
            f"data file {path.name!r} has unsupported type {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        stat = path.stat()
    except OSError as exc:
        raise TaskFailed(f"data file {path.name!r} cannot be read: {exc.strerror}") from None
    # Size and mtime are part of the key: a replaced file gets a fresh index.
    key = (str(path), f"{stat.st_size}-{stat.st_mtime_ns}", str(data_dir))
    index = _INDEXES.get(key)
    if index is None:
        index = _INDEXES[key] = _open_or_build(path, key[1], Path(data_dir), companion)
        while len(_INDEXES) > 8:
            del _INDEXES[next(iter(_INDEXES))]
    return index


# The indexes this process has open: (path, version, DATA_DIR) -> index.
_INDEXES: dict[tuple[str, str, str], FileIndex] = {}


def index_directory(data_dir: Path) -> Path | None:
    """Where indexes are kept: DATA_DIR/.index, else a private temporary directory, else None."""
    candidates = [
        Path(data_dir) / INDEX_DIR_NAME,
        Path(tempfile.gettempdir())
        / f"orchestrator-index-{os.getuid()}"
        / hashlib.sha256(str(data_dir).encode()).hexdigest()[:16],
    ]
    for directory in candidates:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    return None


def _open_or_build(
    path: Path, version: str, data_dir: Path, companion: Companion | None
) -> FileIndex:
    directory = index_directory(data_dir)
    if directory is None:
        return _build(path, version, None, None)
    name = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    stem = directory / f"{name}-{version}"
    index_path = stem.with_suffix(".idx")
    with locked(stem):
        if not index_path.exists():
            _remove_older_versions(stem)
            built = _build(path, version, stem, companion)
            _write_index(index_path, built)
            if companion is not None and built.kind == "csv":
                kept = companion.result()
                write_atomically(companion.target(stem), lambda handle: handle.write(kept))
    return _load(path, version, index_path, stem)


@contextlib.contextmanager
def locked(stem: Path) -> Iterator[None]:
    """Hold the build lock of one file version (other processes wait, then reuse the result)."""
    with open(stem.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_atomically(target: Path, write: Callable[[Any], None]) -> None:
    """Write a file under a temporary name and rename it, so readers never see half of it."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _remove_older_versions(stem: Path) -> None:
    prefix = stem.name.split("-", 1)[0] + "-"
    for old in stem.parent.glob(prefix + "*"):
        if not old.name.startswith(stem.name) and not old.name.endswith(".lock"):
            with contextlib.suppress(OSError):
                old.unlink()


def _write_index(target: Path, built: FileIndex) -> None:
    meta = json.dumps(
        {"kind": built.kind, "rows": built.rows, "header": built.header, "fields": built.fields}
    ).encode()
    # Offsets start on an 8-byte boundary so the mapped file can be viewed as 64-bit integers.
    padding = b" " * (-(len(_MAGIC) + 8 + len(meta)) % 8)

    def write(handle: Any) -> None:
        handle.write(_MAGIC + _OFFSET.pack(len(meta) + len(padding)) + meta + padding)
        handle.write(built.offsets.tobytes())

    write_atomically(target, write)


def _load(path: Path, version: str, index_path: Path, stem: Path) -> FileIndex:
    with open(index_path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if mapped[: len(_MAGIC)] != _MAGIC:
        raise TaskFailed(f"the index of data file {path.name!r} is damaged; remove {index_path}")
    (meta_length,) = _OFFSET.unpack_from(mapped, len(_MAGIC))
    body = len(_MAGIC) + 8
    meta = json.loads(bytes(mapped[body : body + meta_length]))
    offsets = memoryview(mapped)[body + meta_length :].cast("q")
    return FileIndex(
        path, version, meta["kind"], meta["rows"], meta["header"], meta["fields"], offsets, stem
    )


def _build(path: Path, version: str, stem: Path | None, companion: Companion | None) -> FileIndex:
    try:
        if path.suffix.lower() == ".csv":
            header, offsets = _scan_csv(path, companion)
            return FileIndex(
                path,
                version,
                "csv",
                len(offsets) - 1,
                header,
                list(dict.fromkeys(header)),
                memoryview(offsets),
                stem,
            )
        fields, offsets = _scan_json(path)
        return FileIndex(
            path, version, "json", len(offsets) - 1, None, fields, memoryview(offsets), stem
        )
    except UnicodeDecodeError:
        raise TaskFailed(f"data file {path.name!r} is not UTF-8 text") from None
    except OSError as exc:
        raise TaskFailed(f"data file {path.name!r} cannot be read: {exc.strerror}") from None


def _open_data(path: Path) -> Any:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise TaskFailed(f"data file {path.name!r} cannot be read: {exc.strerror}") from None


# ---- CSV -------------------------------------------------------------------------------------


def _scan_csv(path: Path, companion: Companion | None = None) -> tuple[list[str], array]:
    """The header row and where each data row starts, parsed by the csv module itself."""
    position = 0

    def lines(handle: Any) -> Iterator[str]:
        # csv.reader pulls one line at a time and returns a row as soon as its last line is in,
        # so `position` is the end of the row just returned. Lines end at \n, \r or \r\n, as in
        # a file opened with newline="".
        nonlocal position
        carry = b""
        first = True
        while block := handle.read(_BLOCK_BYTES):
            parts = (carry + block).splitlines(keepends=True)
            # The last part may be cut short (or a \r whose \n is in the next block).
            carry = parts.pop()
            for line in parts:
                position += len(line)
                yield line.decode("utf-8-sig" if first else "utf-8")
                first = False
        if carry:
            position += len(carry)
            yield carry.decode("utf-8-sig" if first else "utf-8")

    offsets = array("q")
    with _open_data(path) as handle, _open_data(path) as again:

        def read(number: int) -> list[str]:
            # A row seen earlier in this pass, parsed again from its own bytes.
            again.seek(offsets[number])
            text = again.read(offsets[number + 1] - offsets[number]).decode("utf-8")
            return next(row for row in csv.reader(io.StringIO(text, newline="")) if row)

        reader = csv.reader(lines(handle))
        try:
            header = next(reader, [])
            row_start = position
            batch: list[list[str]] = []
            for row in reader:
                if row:
                    offsets.append(row_start)
                    if companion is not None:
                        batch.append(row)
                        if len(batch) == _COMPANION_ROWS:
                            # Row n + 1's start is known: every row fed so far can be read again.
                            offsets.append(position)
                            companion.feed(len(offsets) - 1 - len(batch), batch, header, read)
                            offsets.pop()
                            batch = []
                row_start = position
            offsets.append(position)
            if companion is not None and batch:
                companion.feed(len(offsets) - 1 - len(batch), batch, header, read)
        except csv.Error as exc:
            raise TaskFailed(f"data file {path.name!r} is not valid CSV: {exc}") from None
    return header, offsets


def csv_records(rows: Iterable[list[str]], header: list[str]) -> Iterator[Record]:
    """Rows as csv.DictReader(restkey="_extra") makes them: surplus cells under `_extra`,
    missing ones None."""
    width = len(header)
    for cells in rows:
        row: Record = dict(zip(header, cells, strict=False))
        if len(cells) > width:
            row["_extra"] = cells[width:]
        elif len(cells) < width:
            for key in header[len(cells) :]:
                row[key] = None
        yield row


# ---- JSON ------------------------------------------------------------------------------------


def _scan_json(path: Path) -> tuple[list[str], array]:
    """Field names and where each element of the records list starts (and the last one ends)."""
    raw = path.read_bytes()
    base = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    text = raw[base:].decode("utf-8")
    del raw
    shape_error = TaskFailed(
        f'data file {path.name!r} must hold a list of objects or {{"records": [...]}}'
    )
    positions = _BytePositions(text, base)
    try:
        position = _skip_space(text, 0)
        if text.startswith("[", position):
            fields, offsets, position = _scan_list(text, position, positions, shape_error)
        elif text.startswith("{", position):
            fields, offsets, position = _scan_records_member(text, position, positions, shape_error)
        else:
            _DECODER.raw_decode(text, position)  # a JSON error if it is not JSON at all
            raise shape_error
        rest = _skip_space(text, position)
        if rest != len(text):
            raise json.JSONDecodeError("Extra data", text, rest)
    except json.JSONDecodeError as exc:
        raise TaskFailed(f"data file {path.name!r} is not valid JSON: {exc.msg}") from None
    return fields, offsets


class _BytePositions:
    """Byte offsets of character positions, encoding each stretch of text once (in order)."""

    def __init__(self, text: str, base: int) -> None:
        self.text, self.char, self.byte = text, 0, base

    def of(self, char: int) -> int:
        self.byte += len(self.text[self.char : char].encode("utf-8"))
        self.char = char
        return self.byte


def _scan_list(
    text: str, position: int, positions: _BytePositions, shape_error: TaskFailed
) -> tuple[list[str], array, int]:
    """Offsets of the elements of the list at `position`, its fields, and where it ends."""
    fields: dict[str, None] = {}
    offsets = array("q")
    position = _skip_space(text, position + 1)
    end = position
    if not text.startswith("]", position):
        while True:
            element, end = _DECODER.raw_decode(text, position)
            if not isinstance(element, dict):
                raise shape_error
            offsets.append(positions.of(position))
            for key in element:
                fields.setdefault(key)
            position = _skip_space(text, end)
            if text.startswith(",", position):
                position = _skip_space(text, position + 1)
                continue
            if not text.startswith("]", position):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
            break
    offsets.append(positions.of(end))
    return list(fields), offsets, position + 1


def _scan_records_member(
    text: str, position: int, positions: _BytePositions, shape_error: TaskFailed
) -> tuple[list[str], array, int]:
    """The "records" list of a top-level object (the last one, as json.load keeps)."""
    found: tuple[list[str], array] | None = None
    seen_records = False
    position = _skip_space(text, position + 1)
    if text.startswith("}", position):
        raise shape_error
    while True:
        if not text.startswith('"', position):
            raise json.JSONDecodeError(
                "Expecting property name enclosed in double quotes", text, position
            )
        key, position = json.decoder.scanstring(text, position + 1)  # type: ignore[attr-defined]
        position = _skip_space(text, position)
        if not text.startswith(":", position):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, position)
        position = _skip_space(text, position + 1)
        if key == "records" and text.startswith("[", position):
            fields, offsets, position = _scan_list(text, position, positions, shape_error)
            found, seen_records = (fields, offsets), True
        else:
            _, position = _DECODER.raw_decode(text, position)
            if key == "records":
                found, seen_records = None, True
        position = _skip_space(text, position)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
            continue
        if not text.startswith("}", position):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
        break
    if not seen_records or found is None:
        raise shape_error
    return found[0], found[1], position + 1


def _skip_space(text: str, position: int) -> int:
    match = _SPACE.match(text, position)
    return match.end() if match else position


def _json_records(text: str, name: str) -> Iterator[Record]:
    position = 0
    try:
        while True:
            while position < len(text) and text[position] in " \t\n\r,":
                position += 1
            if position >= len(text) or text[position] == "]":
                return
            element, position = _DECODER.raw_decode(text, position)
            yield element
    except json.JSONDecodeError as exc:
        raise TaskFailed(f"data file {name!r} is not valid JSON: {exc.msg}") from None

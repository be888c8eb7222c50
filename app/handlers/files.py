"""Data files a task may read: confined to DATA_DIR and parsed once per process."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

from app.handlers import TaskFailed

SUPPORTED_SUFFIXES = (".csv", ".json")

# A mass-action gives every bot of a swarm the same file; a few entries per process are enough
# for one file to be parsed once per worker instead of once per bot.
_CACHE_ENTRIES = 8


def resolve_data_file(data_dir: Path, name: str) -> Path:
    """Return the real path of `name` inside data_dir, or raise TaskFailed."""
    if not isinstance(name, str) or not name.strip():
        raise TaskFailed("data file name must be a non-empty string")
    if "\x00" in name:
        raise TaskFailed("data file name must not contain NUL bytes")
    relative = Path(name)
    if relative.is_absolute() or name.startswith(("/", "\\")):
        raise TaskFailed(f"data file {name!r} must be a path relative to DATA_DIR")
    base = Path(data_dir).resolve()
    # resolve() follows symlinks, so a link pointing outside DATA_DIR is caught here too.
    target = (base / relative).resolve()
    if not target.is_relative_to(base) or target == base:
        raise TaskFailed(f"data file {name!r} is outside DATA_DIR")
    if not target.is_file():
        raise TaskFailed(f"data file {name!r} not found in DATA_DIR")
    return target


def load_records(path: Path) -> list[dict[str, Any]]:
    """Parse a .csv or .json data file into records; the list is shared, do not mutate it."""
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
    return _load_cached(str(path), suffix, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=_CACHE_ENTRIES)
def _load_cached(path: str, suffix: str, mtime_ns: int, size: int) -> list[dict[str, Any]]:
    # mtime and size are part of the key so a replaced file is read again.
    try:
        if suffix == ".csv":
            return _read_csv(Path(path))
        return _read_json(Path(path))
    except UnicodeDecodeError:
        raise TaskFailed(f"data file {Path(path).name!r} is not UTF-8 text") from None
    except OSError as exc:
        raise TaskFailed(f"data file {Path(path).name!r} cannot be read: {exc.strerror}") from None


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        try:
            # Cells beyond the header go under "_extra" rather than a None key JSON cannot hold.
            return [dict(row) for row in csv.DictReader(handle, restkey="_extra")]
        except csv.Error as exc:
            raise TaskFailed(f"data file {path.name!r} is not valid CSV: {exc}") from None


def _read_json(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8-sig") as handle:
        try:
            document = json.load(handle)
        except json.JSONDecodeError as exc:
            raise TaskFailed(f"data file {path.name!r} is not valid JSON: {exc.msg}") from None
    if isinstance(document, dict) and "records" in document:
        document = document["records"]
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        raise TaskFailed(
            f'data file {path.name!r} must hold a list of objects or {{"records": [...]}}'
        )
    return document


def input_records(data: dict[str, Any], data_dir: Path) -> list[dict[str, Any]]:
    """Records given inline as `records`, or read from `input_file` / `dataset` in data_dir."""
    if "records" in data:
        records = data["records"]
        if not isinstance(records, list) or not all(isinstance(row, dict) for row in records):
            raise TaskFailed("'records' must be a list of objects")
        return records
    name = data_file_name(data)
    if name is None:
        raise TaskFailed("give the data as 'records', 'input_file' or 'dataset'")
    return load_records(resolve_data_file(data_dir, name))


def data_file_name(data: dict[str, Any]) -> Any:
    """The file a task names as `input_file` or `dataset`, or None."""
    for key in ("input_file", "dataset"):
        if data.get(key) is not None:
            return data[key]
    return None

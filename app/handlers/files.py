"""Data files a task may read: confined to DATA_DIR (read by ranges, see file_index.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.handlers import TaskFailed


def resolve_data_file(data_dir: Path, name: str) -> Path:
    """Return the real path of `name` inside data_dir, or raise TaskFailed."""
    if isinstance(name, str):
        known = _RESOLVED.get((str(data_dir), name))
        # A path found inside DATA_DIR stays inside: a link changed later is not followed.
        if known is not None and known.is_file():
            return known
    target = _resolve(data_dir, name)
    _RESOLVED[(str(data_dir), name)] = target
    while len(_RESOLVED) > 64:
        del _RESOLVED[next(iter(_RESOLVED))]
    return target


# (DATA_DIR, name) -> the checked real path: every bot of a mass-action names the same file.
_RESOLVED: dict[tuple[str, str], Path] = {}


def _resolve(data_dir: Path, name: str) -> Path:
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


def data_file_name(data: dict[str, Any]) -> Any:
    """The file a task names as `input_file` or `dataset`, or None."""
    for key in ("input_file", "dataset"):
        if data.get(key) is not None:
            return data[key]
    return None

"""The hot statements, prepared once per database connection and then executed by name.

psycopg2 sends each statement as text, so PostgreSQL parses and plans it on every call; for the
statements of the online path (one assignment, one recorded outcome, the lean reads) that was as
much server time as running them (docs/performance.md, the online path). A statement goes
through `execute()` with SQLAlchemy's `:name` parameters, as with `text()`; the first call on a
connection prepares it (PostgreSQL infers the parameters' types from where they stand, so a
parameter whose place says nothing needs a CAST), and every later one sends
`EXECUTE name(...)`. A prepared statement lives as long as its connection and survives
rollbacks.

Planned at every run (`plan_cache_mode=force_custom_plan` on every connection, app/__init__.py):
what is saved is the parse. After five runs PostgreSQL would otherwise keep one generic plan for
every later run, and a plan made while a table was small (a scan of a few rows) stayed after the
table grew: the worker's single-task statements, prepared on an empty task table, fell behind a
mixed load once two mass-actions had added 40,000 rows (the online benchmark's mixed minute:
its backlog drained in 18-48 s instead of 0.1 s; an ANALYZE, which autovacuum may never run in
time, is what would have replaced the plan). In process, an assignment costs 3.0 ms with
generic plans, 3.4 ms planned at each run and 3.6 ms as text.

Only for a few rows: with generic plans, a plan made for a handful of ids was the wrong one for
a chunk of 2,000 (a 50,000-task mass-action took 2.6-2.9 s instead of 2.2-2.4 s). A statement
over more than FEW_ROWS rows goes as text.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, CursorResult, text

# As sqlalchemy.text() reads parameters: `:name`, not `::type` or an escaped `\:`.
_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")
_PREPARED = "prepared_statements"
FEW_ROWS = 16


@lru_cache(maxsize=256)
def _numbered(sql: str) -> tuple[str, str, tuple[str, ...]]:
    """(name, the statement with $1..$n, the parameter names in that order)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    numbered = _PARAMETER.sub(number, sql)
    name = "hot_" + hashlib.sha1(sql.encode()).hexdigest()[:20]
    return name, numbered, tuple(names)


def execute(
    connection: Connection, sql: str, params: dict[str, Any], rows: int = 1
) -> CursorResult[Any]:
    """Run `sql` with `params` on `connection` (inside its transaction, if it has one), as a
    prepared statement when it works on at most FEW_ROWS `rows`."""
    if rows > FEW_ROWS:
        return connection.execute(text(sql), params)
    name, numbered, names = _numbered(sql)
    prepared: set[str] = connection.info.setdefault(_PREPARED, set())
    if name not in prepared:
        # Through SQLAlchemy, so a lost connection is seen as one; no parameters, so a literal
        # `%` is doubled for the driver.
        connection.exec_driver_sql(f"PREPARE {name} AS {numbered}".replace("%", "%%"), ())
        prepared.add(name)
    placeholders = ", ".join(["%s"] * len(names))
    call = f"EXECUTE {name}({placeholders})" if names else f"EXECUTE {name}"
    return connection.exec_driver_sql(call, tuple(params[key] for key in names))

"""What must hold after any fault: every task run and every counter exact.

check_invariants() reads the tables with plain SQL and returns one line per broken rule (an empty
list means all good). It is used by tests/test_faults.py after every scenario and by
bench/chaos.py for the reliability table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

TERMINAL = ("completed", "failed", "cancelled")
OUTCOMES = ("completed", "failed", "cancelled")

# Rows of tasks per outcome: all of them, those with a bot, those with a swarm.
_TASK_TOTALS = """
SELECT status, count(*), count(bot_id), count(swarm_id) FROM tasks GROUP BY status
"""

# A swarm's task counters: its row's columns plus its shard rows (migration 0011).
_SWARMS = """
(SELECT s.id, s.total_tasks + coalesce(c.total_tasks, 0) AS total_tasks,
        s.completed_tasks + coalesce(c.completed_tasks, 0) AS completed_tasks,
        s.failed_tasks + coalesce(c.failed_tasks, 0) AS failed_tasks,
        s.cancelled_tasks + coalesce(c.cancelled_tasks, 0) AS cancelled_tasks
   FROM swarms s
   LEFT JOIN (SELECT swarm_id, sum(total_tasks) AS total_tasks,
                     sum(completed_tasks) AS completed_tasks, sum(failed_tasks) AS failed_tasks,
                     sum(cancelled_tasks) AS cancelled_tasks
                FROM swarm_counter_shards GROUP BY swarm_id) c ON c.swarm_id = s.id)
"""

_SUMS = f"""
SELECT (SELECT coalesce(sum(completed_tasks), 0) FROM bots),
       (SELECT coalesce(sum(failed_tasks), 0) FROM bots),
       (SELECT coalesce(sum(cancelled_tasks), 0) FROM bots),
       (SELECT coalesce(sum(completed_tasks), 0) FROM {_SWARMS} AS s),
       (SELECT coalesce(sum(failed_tasks), 0) FROM {_SWARMS} AS s),
       (SELECT coalesce(sum(cancelled_tasks), 0) FROM {_SWARMS} AS s)
"""

# Per bot and per swarm, so two errors that cancel out in the sums are still caught.
_PER_OWNER = """
SELECT count(*) FROM {table} o
  LEFT JOIN (SELECT {key} AS owner,
                    count(*) AS total,
                    count(*) FILTER (WHERE status = 'completed') AS completed,
                    count(*) FILTER (WHERE status = 'failed') AS failed,
                    count(*) FILTER (WHERE status = 'cancelled') AS cancelled
               FROM tasks WHERE {key} IS NOT NULL GROUP BY {key}) t ON t.owner = o.id
 WHERE o.completed_tasks <> coalesce(t.completed, 0)
    OR o.failed_tasks <> coalesce(t.failed, 0)
    OR o.cancelled_tasks <> coalesce(t.cancelled, 0)
    OR o.total_tasks <> coalesce(t.total, 0)
"""

# Per mass-action: its counters against its task rows, and ended exactly when all of them did.
_MASS_ACTIONS = """
SELECT count(*) FROM mass_actions m
  LEFT JOIN (SELECT mass_action_id,
                    count(*) AS total,
                    count(*) FILTER (WHERE status = 'running') AS running,
                    count(*) FILTER (WHERE status = 'completed') AS completed,
                    count(*) FILTER (WHERE status = 'failed') AS failed,
                    count(*) FILTER (WHERE status = 'cancelled') AS cancelled
               FROM tasks WHERE mass_action_id IS NOT NULL GROUP BY mass_action_id) t
    ON t.mass_action_id = m.id
 WHERE m.total <> coalesce(t.total, 0) OR m.running <> coalesce(t.running, 0)
    OR m.completed <> coalesce(t.completed, 0) OR m.failed <> coalesce(t.failed, 0)
    OR m.cancelled <> coalesce(t.cancelled, 0)
    OR (m.finished_at IS NULL) <> (m.completed + m.failed + m.cancelled < m.total)
"""

_CENSUS = """
SELECT count(*) FROM bot_census c
  FULL JOIN (SELECT coalesce(swarm_id, '') AS swarm_id, tier, status, count(*) AS n
               FROM bots GROUP BY 1, 2, 3) b
    ON b.swarm_id = c.swarm_id AND b.tier = c.tier AND b.status = c.status
 WHERE coalesce(c.n, 0) <> coalesce(b.n, 0)
"""

_CLAIMED = """
SELECT count(*) FILTER (WHERE status = 'running'),
       count(*) FILTER (WHERE lease_expires_at IS NOT NULL AND status <> 'running'),
       count(*) FILTER (WHERE attempts > :max_attempts)
  FROM tasks
"""

# Tasks of `count` mass-actions: the hash field their executions were recorded under.
_COUNTED_TASKS = """
SELECT t.id, t.attempts, t.status,
       (p.data ->> 'run') || ':' || coalesce(CAST(t.slice_index AS text), 'None')
  FROM tasks t JOIN task_payloads p ON p.id = t.payload_id
 WHERE t.type = 'count' AND p.data ? 'run'
"""


def _rows(source: Any, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
    if isinstance(source, Engine):
        with source.connect() as connection:
            return list(connection.execute(text(sql), params or {}))
    return list(source.execute(text(sql), params or {}))


def check_invariants(
    source: Any, *, max_attempts: int = 3, executions: Mapping[str, int] | None = None
) -> list[str]:
    """Every broken rule, one line each; [] when all hold.

    `source` is a Session, Connection or Engine. `executions` maps a `count` task's hash field
    (tests/plugins/faults.py) to how often it ran; then no task may have run more times than it
    was claimed (its attempts).
    """
    problems: list[str] = []
    by_status = {
        status: (n, n_bot, n_swarm) for status, n, n_bot, n_swarm in _rows(source, _TASK_TOTALS)
    }
    open_tasks = {s: n for s, (n, _, _) in by_status.items() if s not in TERMINAL}
    if open_tasks:
        problems.append(f"tasks not terminal: {open_tasks}")

    sums = _rows(source, _SUMS)[0]
    bot_sums = dict(zip(OUTCOMES, (int(v) for v in sums[:3]), strict=True))
    swarm_sums = dict(zip(OUTCOMES, (int(v) for v in sums[3:]), strict=True))
    counters = {
        name: int(value)
        for name, value in _rows(source, "SELECT name, sum(value) FROM counters GROUP BY name")
        if name.startswith("tasks_")
    }
    for outcome in OUTCOMES:
        rows, rows_with_bot, rows_with_swarm = by_status.get(outcome, (0, 0, 0))
        counted = counters.get(f"tasks_{outcome}", 0)
        if bot_sums[outcome] != rows_with_bot:
            problems.append(
                f"{outcome}: sum of bot counters {bot_sums[outcome]} != {rows_with_bot} task rows"
            )
        if swarm_sums[outcome] != rows_with_swarm:
            problems.append(
                f"{outcome}: sum of swarm counters {swarm_sums[outcome]}"
                f" != {rows_with_swarm} task rows"
            )
        if counted != rows:
            problems.append(f"{outcome}: counter tasks_{outcome} {counted} != {rows} task rows")

    for table, key in (("bots", "bot_id"), (_SWARMS, "swarm_id")):
        wrong = _rows(source, _PER_OWNER.format(table=table, key=key))[0][0]
        if wrong:
            problems.append(f"{wrong} {table} whose task counters differ from their task rows")
    mass_actions_wrong = _rows(source, _MASS_ACTIONS)[0][0]
    if mass_actions_wrong:
        problems.append(f"{mass_actions_wrong} mass-actions whose counters differ from their tasks")
    census_wrong = _rows(source, _CENSUS)[0][0]
    if census_wrong:
        problems.append(f"{census_wrong} bot_census tallies differ from the bots table")

    running, leased, over_limit = _rows(source, _CLAIMED, {"max_attempts": max_attempts})[0]
    if running:
        problems.append(f"{running} tasks still running (claimed)")
    if leased:
        problems.append(f"{leased} finished tasks still hold a lease")
    if over_limit:
        problems.append(f"{over_limit} tasks with more than {max_attempts} attempts")

    if executions is not None:
        too_many = 0
        never_ran = 0
        for task_id, attempts, status, field in _rows(source, _COUNTED_TASKS):
            ran = executions.get(field, 0)
            if ran > attempts:
                too_many += 1
                if too_many <= 3:
                    problems.append(f"task-{task_id} ran {ran} times in {attempts} attempts")
            if status == "completed" and attempts and not ran:
                never_ran += 1
        if too_many > 3:
            problems.append(f"... {too_many} tasks in all ran more often than they were claimed")
        if never_ran:
            problems.append(f"{never_ran} tasks completed by a worker without running")
    return problems


def execution_stats(source: Any, executions: Mapping[str, int]) -> dict[str, int]:
    """Re-runs of `count` tasks: extra executions in all (legitimate after a crash mid-chunk),
    and executions beyond a task's attempts (never legitimate)."""
    extra = beyond = 0
    for _, attempts, _, field in _rows(source, _COUNTED_TASKS):
        ran = executions.get(field, 0)
        extra += max(ran - 1, 0)
        beyond += max(ran - attempts, 0)
    return {"extra_executions": extra, "executions_beyond_attempts": beyond}

"""Counters that every request moves, spread over shard rows so that writers never queue on one.

The service totals (`counters`) and the swarms' task counters (`swarm_counter_shards`) are kept
in up to SHARDS rows per key. A statement adds to the shard of its database backend
(`pg_backend_pid() % SHARDS`): two transactions running at once are on two backends, so they
almost always write different rows. Each addition is an ordinary row change in the statement
that moves what it counts, so it commits with it or not at all, and a read, which sums the
shards, is exact at any moment and after any crash.

Lock order. Every statement that locks rows of more than one kind takes them in this order:

    tasks -> mass_actions -> bots (by id) -> swarm_counter_shards (by swarm) -> counters (by name)

(a swarm's own row, and the bot_census, are locked only by statements that change a swarm or its
bots in bulk, before all of these). The upserts below insert in key order; statements that lock
several bots take them through an ORDER BY ... FOR UPDATE first (outcomes.TALLY_CTES,
task_rows). Two writers on one shard then wait for each other at most, and never deadlock.
"""

from __future__ import annotations

SHARDS = 16
# The shard this transaction's backend writes to.
SHARD = f"CAST(pg_backend_pid() % {SHARDS} AS smallint)"

SWARM_COUNTERS = ("total_tasks", "completed_tasks", "failed_tasks", "cancelled_tasks")


def add_to_totals_sql(pairs: str) -> str:
    """An upsert adding `(name, amount)` pairs (a VALUES list or SELECT, one row per name) to the
    service totals, in name order."""
    return (
        f"INSERT INTO counters AS c (name, shard, value) SELECT p.name, {SHARD}, p.value"
        f" FROM ({pairs}) AS p(name, value) ORDER BY p.name"
        " ON CONFLICT (name, shard) DO UPDATE SET value = c.value + excluded.value"
    )


def add_to_swarms_sql(rows: str) -> str:
    """An upsert adding `rows` (a SELECT of swarm_id, total, completed, failed, cancelled, one
    row per swarm) to the swarms' task counters, in swarm order."""
    updates = ", ".join(f"{name} = c.{name} + excluded.{name}" for name in SWARM_COUNTERS)
    return (
        f"INSERT INTO swarm_counter_shards AS c (swarm_id, shard, {', '.join(SWARM_COUNTERS)})"
        f" SELECT x.swarm_id, {SHARD}, x.total, x.completed, x.failed, x.cancelled"
        f" FROM ({rows}) AS x(swarm_id, total, completed, failed, cancelled) ORDER BY x.swarm_id"
        f" ON CONFLICT (swarm_id, shard) DO UPDATE SET {updates}"
    )


# The service totals as (name, value) rows.
TOTALS_SQL = "SELECT name, sum(value) AS value FROM counters GROUP BY name"


def swarm_counters_sql(alias: str) -> str:
    """Select-list SQL for the task counters of the swarm row `alias` (its columns plus its
    shards), named like the columns; the FROM clause must include swarm_shards_join(alias)."""
    return ", ".join(f"{alias}.{name} + {alias}_sc.{name} AS {name}" for name in SWARM_COUNTERS)


def swarm_shards_join(alias: str) -> str:
    """The join that swarm_counters_sql(alias) reads: one summed row per swarm."""
    sums = ", ".join(f"coalesce(sum(c.{name}), 0) AS {name}" for name in SWARM_COUNTERS)
    return (
        f" CROSS JOIN LATERAL (SELECT {sums} FROM swarm_counter_shards c"
        f" WHERE c.swarm_id = {alias}.id) AS {alias}_sc"
    )

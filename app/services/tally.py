"""The one rule for counting task outcomes: bots, swarms and service totals move together.

Every statement that moves tasks into a terminal state exposes the moved rows as a CTE named
`moved` with columns (bot_id, swarm_id, status); TALLY_CTES then adds the same amounts to the bot,
its swarm and the totals in that same statement, so they commit together or not at all.
"""

from __future__ import annotations

TALLY_CTES = """
, per_bot AS (
    UPDATE bots b
       SET completed_tasks = b.completed_tasks + x.completed,
           failed_tasks = b.failed_tasks + x.failed,
           cancelled_tasks = b.cancelled_tasks + x.cancelled,
           last_active = CASE WHEN x.completed + x.failed > 0 THEN now() ELSE b.last_active END
      FROM (SELECT bot_id,
                   count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'cancelled') AS cancelled
              FROM moved WHERE bot_id IS NOT NULL GROUP BY bot_id) x
     WHERE b.id = x.bot_id
)
, per_swarm AS (
    UPDATE swarms s
       SET completed_tasks = s.completed_tasks + x.completed,
           failed_tasks = s.failed_tasks + x.failed,
           cancelled_tasks = s.cancelled_tasks + x.cancelled
      FROM (SELECT swarm_id,
                   count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'cancelled') AS cancelled
              FROM moved WHERE swarm_id IS NOT NULL GROUP BY swarm_id) x
     WHERE s.id = x.swarm_id
)
, per_total AS (
    INSERT INTO counters (name, value)
    SELECT 'tasks_' || status, count(*) FROM moved GROUP BY status
    ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value
)
"""


def add_to_counters_sql(pairs: str) -> str:
    """An upsert adding `(name, amount)` pairs (a VALUES list or SELECT) to the totals."""
    return (
        f"INSERT INTO counters (name, value) {pairs} "
        "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
    )

"""The hottest reads, answered with one SELECT on a pooled connection in autocommit (the app's
autocommit engine, app/extensions.py).

No ORM session, no BEGIN/ROLLBACK, no model objects and no schema: the row becomes the answer's
JSON directly, in the fields and order of the documented schema (app/api/schemas.py: BotOut,
SwarmOut, MassActionOut), which tests/test_plain_reads.py holds them to. Measured on the read
benchmark (docs/performance.md, the online path).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg2

from app.errors import DatabaseUnavailable, NotFound
from app.extensions import autocommit_engine
from app.models import MassAction
from app.services import callbacks, partials, prepared
from app.services.counter_shards import swarm_counters_sql, swarm_shards_join
from app.services.ids import iso, utcnow
from app.services.mass_actions import MassActionView
from app.services.tenancy import visible


def fetch_one(sql: str, params: dict[str, Any]) -> Any:
    """The first row of one statement, on a pooled connection without a transaction: a SELECT,
    or a write that is then its own transaction, committed when this returns."""
    rows = fetch_all(sql, params)
    return rows[0] if rows else None


def fetch_all(sql: str, params: dict[str, Any], rows: int = 1) -> list[Any]:
    """Every row of one statement, on a pooled connection without a transaction; `rows`: how
    many it works on (app/services/prepared.py)."""
    try:
        with autocommit_engine().connect() as connection:
            return list(prepared.execute(connection, sql, params, rows))
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
        # Raised unwrapped by the pool when it handles a connection whose server went away
        # (errors SQLAlchemy wraps reach app/errors.py's handler instead).
        raise DatabaseUnavailable("The database is unavailable.") from error


_BOT = """
SELECT id, name, tier, status, capabilities, swarm_id, tenant, total_tasks, completed_tasks,
       failed_tasks, cancelled_tasks, created_at, last_active
  FROM bots WHERE id = :id
"""


def bot_json(bot_id: str) -> str:
    """GET /bots/{id} as JSON text, or 404 (also another tenant's bot)."""
    row = fetch_one(_BOT, {"id": bot_id})
    if row is None or not visible(row.tenant):
        raise NotFound(f"Bot {bot_id!r} not found.")
    return json.dumps(
        {
            "id": row.id,
            "name": row.name,
            "tier": row.tier,
            "status": row.status,
            "capabilities": row.capabilities,
            "swarm_id": row.swarm_id,
            "tasks_completed": row.completed_tasks,
            "total_tasks": row.total_tasks,
            "pending_tasks": row.total_tasks
            - row.completed_tasks
            - row.failed_tasks
            - row.cancelled_tasks,
            "completed_tasks": row.completed_tasks,
            "failed_tasks": row.failed_tasks,
            "created_at": iso(row.created_at),
            "last_active": iso(row.last_active),
        }
    )


_SWARM = f"""
SELECT s.id, s.name, s.tier, s.capabilities, s.status, s.tenant, s.created_at,
       {swarm_counters_sql("s")},
       (SELECT coalesce(sum(n), 0) FROM bot_census c
         WHERE c.swarm_id = s.id AND c.status IN ('active', 'paused')) AS bot_count,
       (SELECT coalesce(sum(n), 0) FROM bot_census c
         WHERE c.swarm_id = s.id AND c.status = 'active') AS active_bots
  FROM swarms s {swarm_shards_join("s")}
 WHERE s.id = :id
"""


def swarm_json(swarm_id: str) -> str:
    """GET /swarms/{id} as JSON text, or 404 (also another tenant's swarm)."""
    row = fetch_one(_SWARM, {"id": swarm_id})
    if row is None or not visible(row.tenant):
        raise NotFound(f"Swarm {swarm_id!r} not found.")
    bot_count = int(row.bot_count)
    return json.dumps(
        {
            "id": row.id,
            "name": row.name,
            "bot_count": bot_count,
            "tier": row.tier,
            "capabilities": row.capabilities,
            "active_bots": int(row.active_bots),
            "total_tasks_assigned": int(row.total_tasks),
            "total_tasks_completed": int(row.completed_tasks),
            "total_tasks_failed": int(row.failed_tasks),
            "average_tasks_per_bot": (
                round(int(row.completed_tasks) / bot_count, 2) if bot_count else 0.0
            ),
            "status": row.status,
            "created_at": iso(row.created_at),
        }
    )


# The row, its aggregate's partials and its callback's delivery, in one statement.
_MASS_ACTION_COLUMNS = tuple(column.name for column in MassAction.__table__.columns)
_MASS_ACTION = f"""
SELECT {", ".join(f"m.{name}" for name in _MASS_ACTION_COLUMNS)},
       (SELECT json_agg(json_build_array(p.id, p.partial)) FROM mass_action_partials p
         WHERE p.mass_action_id = m.id) AS partials,
       c.resource_id IS NOT NULL AS delivery_started, c.url, c.state, c.attempts, c.last_status,
       c.last_error, c.delivered_at
  FROM mass_actions m LEFT JOIN callbacks c ON c.resource_id = m.id
 WHERE m.id = :id
"""


def mass_action_json(mass_action_id: str) -> str:
    """GET /mass-actions/{id} as JSON text, or 404 (also another tenant's mass-action)."""
    row = fetch_one(_MASS_ACTION, {"id": mass_action_id})
    if row is None or not visible(row.tenant):
        raise NotFound(f"Mass-action {mass_action_id!r} not found.")
    # A model object of no session, for the view that the ORM path builds too.
    mass_action = MassAction(**{name: getattr(row, name) for name in _MASS_ACTION_COLUMNS})
    aggregate = partials.aggregate(row.id, row.type, row.partials or [])
    view = MassActionView(mass_action, utcnow(), aggregate)
    delivery = callbacks.describe(row.callback_url, row if row.delivery_started else None)
    return json.dumps(view.document(delivery))

"""Live-bot tallies by (tenant, swarm, tier, status), kept in step with every bot insert and
status change.

Stats and capacity read these few rows instead of counting 50,000 bots. Every change to a bot's
status goes through _change (change_bot, change_swarm_bots, retire_newest_bots), which moves the tallies in the same statement.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.extensions import db
from app.models import BOT_RETIRED, LIVE_BOT_STATES
from app.services.tenancy import census_key

_ADD = """
INSERT INTO bot_census (tenant, swarm_id, tier, status, n)
VALUES (:tenant, :swarm_id, :tier, :status, :n)
ON CONFLICT (tenant, swarm_id, tier, status) DO UPDATE SET n = bot_census.n + excluded.n
"""

# `target` selects and locks the bots to change; their tallies move from the old to the new status.
_CHANGE = """
WITH target AS (
    SELECT id, coalesce(tenant, '') AS tenant_key, coalesce(swarm_id, '') AS swarm_key, tier,
           status AS old_status
      FROM bots WHERE {where} AND status = ANY(:from_states)
     ORDER BY id FOR UPDATE
), changed AS (
    UPDATE bots b SET status = :to_state FROM target WHERE b.id = target.id
    RETURNING target.tenant_key, target.swarm_key, target.tier, target.old_status
), moves AS (
    SELECT tenant_key, swarm_key, tier, old_status AS status, -count(*) AS n
      FROM changed GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT tenant_key, swarm_key, tier, :to_state, count(*) FROM changed GROUP BY 1, 2, 3
), tallied AS (
    INSERT INTO bot_census (tenant, swarm_id, tier, status, n)
    SELECT tenant_key, swarm_key, tier, status, sum(n) FROM moves GROUP BY 1, 2, 3, 4
    ON CONFLICT (tenant, swarm_id, tier, status) DO UPDATE SET n = bot_census.n + excluded.n
)
SELECT id FROM target
"""

# The bots a change may select, on table bots; the only SQL that goes into _CHANGE's `where`.
_ONE_BOT = "id = :bot_id"
_SWARM_BOTS = "swarm_id = :swarm_id"
_NEWEST_LIVE_BOTS = (
    "id IN (SELECT id FROM bots WHERE swarm_id = :swarm_id AND status = ANY(:live)"
    " ORDER BY position DESC LIMIT :excess)"
)


def add_bots(swarm_id: str | None, tier: str, status: str, n: int, tenant: str | None) -> None:
    """Count n new bots in the tallies."""
    db.session.execute(
        text(_ADD),
        {
            "tenant": census_key(tenant),
            "swarm_id": swarm_id or "",
            "tier": tier,
            "status": status,
            "n": n,
        },
    )


def change_bot(bot_id: str, from_states: tuple[str, ...], to_state: str) -> bool:
    """Move one bot from from_states to to_state; False when it was in none of them."""
    return bool(_change(_ONE_BOT, {"bot_id": bot_id}, from_states, to_state))


def change_swarm_bots(swarm_id: str, from_states: tuple[str, ...], to_state: str) -> list[str]:
    """Move every bot of a swarm that is in from_states to to_state; returns their ids."""
    return _change(_SWARM_BOTS, {"swarm_id": swarm_id}, from_states, to_state)


def retire_newest_bots(swarm_id: str, excess: int) -> list[str]:
    """Retire a swarm's `excess` newest live bots (the oldest keep their dataset slices)."""
    return _change(
        _NEWEST_LIVE_BOTS,
        {"swarm_id": swarm_id, "live": list(LIVE_BOT_STATES), "excess": excess},
        LIVE_BOT_STATES,
        BOT_RETIRED,
    )


def _change(
    selector: str, params: dict[str, Any], from_states: tuple[str, ...], to_state: str
) -> list[str]:
    rows = db.session.execute(
        text(_CHANGE.format(where=selector)),
        {**params, "from_states": list(from_states), "to_state": to_state},
    )
    return [row[0] for row in rows]


def live_bots(tenant: str | None = None) -> int:
    """Bots that count against capacity (active or paused), of one tenant or of all."""
    return int(
        db.session.execute(
            text(
                "SELECT coalesce(sum(n), 0) FROM bot_census WHERE status = ANY(:live)"
                " AND (CAST(:tenant AS text) IS NULL OR tenant = :tenant)"
            ),
            {"live": list(LIVE_BOT_STATES), "tenant": tenant},
        ).scalar_one()
    )


def swarm_tallies(swarm_id: str) -> dict[str, int]:
    """How many bots of a swarm are in each status."""
    rows = db.session.execute(
        text("SELECT status, sum(n) FROM bot_census WHERE swarm_id = :s GROUP BY status"),
        {"s": swarm_id},
    )
    return {status: int(n) for status, n in rows}

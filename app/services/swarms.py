"""Swarms: many bots created, scaled, paused and retired as one, with set-based SQL."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, text

from app.errors import Conflict, NotFound
from app.extensions import db
from app.models import BOT_ACTIVE, BOT_PAUSED, BOT_RETIRED, LIVE_BOT_STATES, BotCensus, Swarm
from app.services import capacity, census, task_rows
from app.services.ids import SQL_NEW_BOT_ID, new_id, utcnow
from app.services.outcomes import add_to_counters_sql
from app.services.task_types import get_task_type, require_capability, require_runnable
from app.services.tenancy import current_tenant, visible

SWARM_ACTIVE, SWARM_PAUSED, SWARM_RETIRED = BOT_ACTIVE, BOT_PAUSED, BOT_RETIRED

# One INSERT for the whole swarm; positions number the bots' dataset slices. A bot is named
# `<swarm name>-<n>`, the swarm name shortened so that the whole fits bots.name (200).
_INSERT_BOTS = f"""
INSERT INTO bots (id, name, tier, capabilities, status, swarm_id, tenant, position, created_at,
                  last_active)
SELECT {SQL_NEW_BOT_ID}, left(:name, 199 - length((g + 1)::text)) || '-' || (g + 1), :tier,
       :capabilities, :status, :swarm_id,
       :tenant, g, :now, :now
  FROM generate_series(CAST(:first AS int), CAST(:first AS int) + :count - 1) AS g
RETURNING id
"""


@dataclass(frozen=True)
class SwarmView:
    """A swarm with its live tallies, as GET /swarms/{id} shows it."""

    swarm: Swarm
    bot_count: int
    active_bots: int

    @property
    def average_tasks_per_bot(self) -> float:
        """Completed tasks per live bot, to two places."""
        if not self.bot_count:
            return 0.0
        return round(self.swarm.completed_tasks / self.bot_count, 2)


def create_swarm(
    name: str, count: int, tier: str, capabilities: list[str]
) -> tuple[Swarm, list[str]]:
    """Create a swarm of `count` active bots in one statement; returns it with the bot ids."""
    tenant = current_tenant()
    capacity.reserve(count, tenant)
    now = utcnow()
    swarm = Swarm(
        id=new_id("swarm"),
        name=name,
        tier=tier,
        tenant=tenant,
        capabilities=capabilities,
        status=SWARM_ACTIVE,
        next_position=count,
        created_at=now,
        total_tasks=0,
        completed_tasks=0,
        failed_tasks=0,
        cancelled_tasks=0,
    )
    db.session.add(swarm)
    db.session.flush()
    bot_ids = _insert_bots(swarm, first=0, count=count, now=now)
    db.session.commit()
    return swarm, bot_ids


def _insert_bots(swarm: Swarm, first: int, count: int, now) -> list[str]:
    rows = db.session.execute(
        text(_INSERT_BOTS),
        {
            "name": swarm.name,
            "tier": swarm.tier,
            "capabilities": swarm.capabilities,
            "status": BOT_ACTIVE if swarm.status == SWARM_ACTIVE else BOT_PAUSED,
            "swarm_id": swarm.id,
            "tenant": swarm.tenant,
            "first": first,
            "count": count,
            "now": now,
        },
    )
    bot_ids = [row[0] for row in rows]
    census.add_bots(
        swarm.id,
        swarm.tier,
        BOT_ACTIVE if swarm.status == SWARM_ACTIVE else BOT_PAUSED,
        count,
        swarm.tenant,
    )
    db.session.execute(
        text(add_to_counters_sql("VALUES ('bots_created', CAST(:n AS bigint))")), {"n": count}
    )
    return bot_ids


def get_swarm(swarm_id: str, *, lock: bool = False) -> Swarm:
    """The swarm, or 404 (also another tenant's); `lock` holds its row until commit."""
    swarm = db.session.get(Swarm, swarm_id, with_for_update=lock)
    if swarm is None or not visible(swarm.tenant):
        raise NotFound(f"Swarm {swarm_id!r} not found.")
    return swarm


def lock_for_tasks(swarm_id: str, type_name: str) -> Swarm:
    """The swarm, locked, if it may take tasks of this type now (404, 409 or 422 otherwise)."""
    task_type = get_task_type(type_name)
    swarm = get_swarm(swarm_id, lock=True)
    if swarm.status != SWARM_ACTIVE:
        raise Conflict(f"Swarm {swarm_id!r} is {swarm.status}; only active swarms take tasks.")
    require_capability(task_type, swarm.capabilities, f"Swarm {swarm_id!r}")
    require_runnable(task_type)
    return swarm


def view_swarm(swarm_id: str) -> SwarmView:
    """The swarm with its live tallies, read in one query."""
    row = db.session.execute(_VIEW.where(Swarm.id == swarm_id)).first()
    if row is None or not visible(row[0].tenant):
        raise NotFound(f"Swarm {swarm_id!r} not found.")
    swarm, bot_count, active_bots = row
    return SwarmView(swarm=swarm, bot_count=int(bot_count), active_bots=int(active_bots))


def _tally_of(states: tuple[str, ...]):
    """The swarm's bots in these states, from bot_census, as a correlated scalar subquery."""
    return (
        select(func.coalesce(func.sum(BotCensus.n), 0))
        .where(BotCensus.swarm_id == Swarm.id, BotCensus.status.in_(states))
        .scalar_subquery()
    )


_VIEW = select(Swarm, _tally_of(LIVE_BOT_STATES), _tally_of((BOT_ACTIVE,)))


def _view(swarm: Swarm) -> SwarmView:
    tallies = census.swarm_tallies(swarm.id)
    return SwarmView(
        swarm=swarm,
        bot_count=sum(tallies.get(state, 0) for state in LIVE_BOT_STATES),
        active_bots=tallies.get(BOT_ACTIVE, 0),
    )


def list_swarms(limit: int, after: str | None, status: str | None) -> list[SwarmView]:
    """A page of swarms in id order, starting after the cursor."""
    query = select(Swarm).order_by(Swarm.id).limit(limit)
    if current_tenant() is not None:
        query = query.where(Swarm.tenant == current_tenant())
    if after:
        query = query.where(Swarm.id > after)
    if status:
        query = query.where(Swarm.status == status)
    return [_view(swarm) for swarm in db.session.scalars(query)]


def update_swarm(swarm_id: str, count: int | None, status: str | None) -> SwarmView:
    """Scale a swarm to `count` live bots and/or pause or resume it."""
    swarm = get_swarm(swarm_id, lock=True)
    if swarm.status == SWARM_RETIRED:
        raise Conflict(f"Swarm {swarm_id!r} is retired.")
    resumed_bots: list[str] = []
    if status and status != swarm.status:
        source = SWARM_ACTIVE if status == SWARM_PAUSED else SWARM_PAUSED
        changed = census.change_swarm_bots(swarm.id, (source,), status)
        swarm.status = status
        if status == SWARM_ACTIVE:
            resumed_bots = changed
    if count is not None:
        _scale(swarm, count)
    # What the resumed bots held while paused (less what scaling down just cancelled).
    held = task_rows.waiting_of_bots(resumed_bots)
    db.session.commit()
    task_rows.publish(held)
    return view_swarm(swarm_id)


def _scale(swarm: Swarm, count: int) -> None:
    live = _view(swarm).bot_count
    if count > live:
        capacity.reserve(count - live, swarm.tenant)
        _insert_bots(swarm, first=swarm.next_position, count=count - live, now=utcnow())
        swarm.next_position += count - live
    elif count < live:
        retired = census.retire_newest_bots(swarm.id, live - count)
        task_rows.cancel_waiting_of_bots(retired)


def retire_swarm(swarm_id: str) -> SwarmView:
    """Retire every bot of the swarm and cancel the tasks still waiting."""
    swarm = get_swarm(swarm_id, lock=True)
    if swarm.status != SWARM_RETIRED:
        census.change_swarm_bots(swarm.id, LIVE_BOT_STATES, BOT_RETIRED)
        task_rows.cancel_waiting_of_swarm(swarm.id)
        swarm.status = SWARM_RETIRED
        db.session.commit()
    return view_swarm(swarm_id)

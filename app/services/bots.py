"""Single bots: create, read, list, pause/resume, retire."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, text

from app.errors import Conflict, NotFound
from app.extensions import db
from app.models import BOT_ACTIVE, BOT_PAUSED, BOT_RETIRED, LIVE_BOT_STATES, Bot
from app.services import capacity, census, task_rows
from app.services.ids import new_id, utcnow
from app.services.outcomes import add_to_counters_sql
from app.services.tenancy import current_tenant, visible


@dataclass(frozen=True)
class BotFilter:
    """What GET /bots may filter on."""

    tier: str | None = None
    status: str | None = None
    swarm_id: str | None = None
    capability: str | None = None


def create_bot(name: str, tier: str, capabilities: list[str]) -> Bot:
    """Create one active bot, within capacity, owned by the caller's tenant."""
    tenant = current_tenant()
    capacity.reserve(1, tenant)
    now = utcnow()
    bot = Bot(
        id=new_id("bot"),
        name=name,
        tier=tier,
        tenant=tenant,
        capabilities=capabilities,
        status=BOT_ACTIVE,
        created_at=now,
        last_active=now,
        total_tasks=0,
        completed_tasks=0,
        failed_tasks=0,
        cancelled_tasks=0,
    )
    db.session.add(bot)
    census.add_bots(None, tier, BOT_ACTIVE, 1, tenant)
    db.session.execute(text(add_to_counters_sql("VALUES ('bots_created', 1)")))
    db.session.commit()
    return bot


def get_bot(bot_id: str, *, lock: bool = False) -> Bot:
    """The bot, or 404 (also when it belongs to another tenant); `lock` holds its row."""
    bot = db.session.get(Bot, bot_id, with_for_update=lock)
    if bot is None or not visible(bot.tenant):
        raise NotFound(f"Bot {bot_id!r} not found.")
    return bot


def list_bots(filters: BotFilter, limit: int, after: str | None) -> list[Bot]:
    """A page of bots in id order, starting after the cursor."""
    query = select(Bot).order_by(Bot.id).limit(limit)
    if current_tenant() is not None:
        query = query.where(Bot.tenant == current_tenant())
    if after:
        query = query.where(Bot.id > after)
    if filters.tier:
        query = query.where(Bot.tier == filters.tier)
    if filters.status:
        query = query.where(Bot.status == filters.status)
    if filters.swarm_id:
        query = query.where(Bot.swarm_id == filters.swarm_id)
    if filters.capability:
        query = query.where(Bot.capabilities.contains([filters.capability]))
    return list(db.session.scalars(query))


def set_bot_status(bot_id: str, status: str) -> Bot:
    """Pause or resume a bot; resuming re-publishes the tasks it held while paused."""
    bot = get_bot(bot_id)
    if bot.status == BOT_RETIRED:
        raise Conflict(f"Bot {bot_id!r} is retired.")
    source = BOT_ACTIVE if status == BOT_PAUSED else BOT_PAUSED
    census.change_bot(bot_id, (source,), status)
    held = task_rows.waiting_of_bots([bot_id]) if status == BOT_ACTIVE else []
    db.session.commit()
    task_rows.publish(held)
    db.session.refresh(bot)
    return bot


def retire_bot(bot_id: str) -> Bot:
    """Retire a bot: it stops counting against capacity and its waiting tasks are cancelled."""
    bot = get_bot(bot_id)
    if census.change_bot(bot_id, LIVE_BOT_STATES, BOT_RETIRED):
        task_rows.cancel_waiting_of_bots([bot_id])
    db.session.commit()
    db.session.refresh(bot)
    return bot

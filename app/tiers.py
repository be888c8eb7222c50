"""Bot tiers, their queues, and how workflow priorities map onto them."""

from __future__ import annotations

# Canonical spellings, as the spec's `tier_distribution` answers them. Highest priority first:
# workers consume the queues in this order.
TIERS: tuple[str, ...] = ("L20", "advanced", "standard")
TIER_QUEUES: tuple[str, ...] = TIERS

_BY_LOWER = {tier.lower(): tier for tier in TIERS}

# Workflow priorities of POST /orchestrate, mapped onto the tier queues.
PRIORITY_TIERS: dict[str, str] = {
    "low": "standard",
    "normal": "standard",
    "high": "advanced",
    "critical": "L20",
}


def canonical_tier(value: str) -> str | None:
    """The canonical spelling of a tier given in any case, or None if it is not a tier."""
    return _BY_LOWER.get(value.strip().lower()) if isinstance(value, str) else None


def queue_for(tier: str) -> str:
    """The Celery queue that carries a tier's work."""
    return tier


# The I/O pool's queues (calls to downstream services), one per tier, highest priority first.
IO_QUEUE_PREFIX = "io."
IO_QUEUES: tuple[str, ...] = tuple(IO_QUEUE_PREFIX + tier for tier in TIERS)


def io_queue_for(tier: str) -> str:
    """The Celery queue that carries a tier's calls to downstream services (the I/O pool)."""
    return IO_QUEUE_PREFIX + tier

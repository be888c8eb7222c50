"""API keys: created and revoked by operators, stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select

from app.errors import Conflict, Invalid, NotFound
from app.extensions import db
from app.models import ROLES, ApiKey
from app.services.ids import utcnow

KEY_PREFIX = "orch_"


def hash_key(plaintext: str) -> str:
    """The stored form of a key. Keys are long random tokens, so one SHA-256 is enough."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_key_text() -> str:
    """A fresh random key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(name: str, role: str, tenant: str | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns it with its plaintext, which is shown once and never stored."""
    if role not in ROLES:
        raise Invalid(f"Role must be one of: {', '.join(ROLES)}.")
    if db.session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
        raise Conflict(f"A key named {name!r} exists already.")
    plaintext = new_key_text()
    key = ApiKey(
        name=name, role=role, tenant=tenant, key_hash=hash_key(plaintext), prefix=plaintext[:9]
    )
    db.session.add(key)
    db.session.commit()
    return key, plaintext


def list_keys() -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(db.session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(name: str) -> ApiKey:
    """Revoke a key by name; it stops working at once."""
    key = db.session.scalar(select(ApiKey).where(ApiKey.name == name))
    if key is None:
        raise NotFound(f"No key named {name!r}.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        db.session.commit()
    _live.pop(key.key_hash, None)
    return key


@dataclass(frozen=True)
class LiveKey:
    """What a request needs of a live key (a copy: it outlives the session that read it)."""

    id: int | None
    name: str
    role: str
    tenant: str | None


# Live keys by hash, each process its own, for CACHE_SECONDS after they were read: a key revoked
# by another process stops working within that window (at once in the process that revoked it).
# Unknown and revoked keys are never kept, so a new key works at once and guessing costs memory
# nothing; the cache is emptied when it holds CACHE_LIMIT keys.
CACHE_SECONDS = 5.0
CACHE_LIMIT = 10_000
clock = time.monotonic
_live: dict[str, tuple[float, LiveKey]] = {}


def authenticate(plaintext: str) -> LiveKey | None:
    """The live key with this text, or None."""
    digest = hash_key(plaintext)
    cached = _live.get(digest)
    if cached is not None and cached[0] > clock():
        return cached[1]
    key = db.session.scalar(
        select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    )
    if key is None:
        _live.pop(digest, None)
        return None
    live = LiveKey(key.id, key.name, key.role, key.tenant)
    if len(_live) >= CACHE_LIMIT:
        _live.clear()
    _live[digest] = (clock() + CACHE_SECONDS, live)
    return live

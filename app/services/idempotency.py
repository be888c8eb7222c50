"""Stored first answers to POSTs sent with an Idempotency-Key, per caller, for IDEMPOTENCY_TTL.

A stored answer belongs to the caller that made it (`scope`: its API key, or its address when it
sent none), so another caller's identical key is a different key and never sees it. Each
statement runs in its own short transaction on its own connection, outside the request's
session: the claim must be visible to a concurrent retry before the handler commits anything,
and the answer is stored after the handler's commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import text

from app.extensions import db

log = logging.getLogger(__name__)

# Rows deleted per purge statement: each batch is its own short transaction, so the purge never
# holds many row locks or one long transaction while requests claim keys.
PURGE_BATCH = 1000

# A finished answer older than the TTL is taken over by the next request with the same key, as
# if it had been purged; one still running is left to its request (and to the purge).
_CLAIM = """
INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES (:scope, :key, :fingerprint)
ON CONFLICT (scope, key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, status_code = NULL, body = NULL, created_at = now()
 WHERE idempotency_keys.status_code IS NOT NULL
   AND idempotency_keys.created_at < now() - make_interval(secs => :ttl)
RETURNING key
"""

_FIND = """
SELECT fingerprint, status_code, body,
       created_at < now() - make_interval(secs => :ttl) AS expired
  FROM idempotency_keys WHERE scope = :scope AND key = :key
"""

_PURGE = """
DELETE FROM idempotency_keys WHERE (scope, key) IN (
    SELECT scope, key FROM idempotency_keys
     WHERE created_at < now() - make_interval(secs => :ttl)
     ORDER BY created_at LIMIT :batch FOR UPDATE SKIP LOCKED)
"""


@dataclass(frozen=True)
class Stored:
    """What is kept under one caller's key: the request's fingerprint and, once made, its answer."""

    fingerprint: str
    status_code: int | None
    body: str | None
    expired: bool


def ttl_seconds() -> int:
    """How long a stored answer is replayed (IDEMPOTENCY_TTL)."""
    return int(current_app.config["SETTINGS"].idempotency_ttl_s)


def claim(scope: str, key: str, fingerprint: str) -> bool:
    """Take the key for this request; False when the caller already holds it (running or done)."""
    with db.engine.begin() as connection:
        row = connection.execute(
            text(_CLAIM),
            {"scope": scope, "key": key, "fingerprint": fingerprint, "ttl": ttl_seconds()},
        ).first()
    return row is not None


def find(scope: str, key: str) -> Stored | None:
    """The caller's entry under this key, or None when there is none."""
    with db.engine.connect() as connection:
        row = connection.execute(
            text(_FIND), {"scope": scope, "key": key, "ttl": ttl_seconds()}
        ).first()
    return None if row is None else Stored(row.fingerprint, row.status_code, row.body, row.expired)


def remember(scope: str, key: str, status_code: int, body: str) -> None:
    """Keep the answer to replay it to the caller's retries."""
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE idempotency_keys SET status_code = :status, body = :body"
                " WHERE scope = :scope AND key = :key"
            ),
            {"scope": scope, "key": key, "status": status_code, "body": body},
        )


def forget(scope: str, key: str) -> None:
    """Let go of the key whatever its state: the answer was a 5xx, which a retry may redo."""
    with db.engine.begin() as connection:
        connection.execute(
            text("DELETE FROM idempotency_keys WHERE scope = :scope AND key = :key"),
            {"scope": scope, "key": key},
        )


def release(scope: str, key: str) -> None:
    """Let go of a key whose request ended without an answer (it crashed), so a retry may run."""
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "DELETE FROM idempotency_keys"
                " WHERE scope = :scope AND key = :key AND status_code IS NULL"
            ),
            {"scope": scope, "key": key},
        )


def purge_expired(batch: int = PURGE_BATCH) -> int:
    """Delete every stored answer older than IDEMPOTENCY_TTL, in batches; returns how many."""
    ttl, purged = ttl_seconds(), 0
    while True:
        with db.engine.begin() as connection:
            deleted = connection.execute(text(_PURGE), {"ttl": ttl, "batch": batch}).rowcount
        purged += deleted
        if deleted < batch:
            break
    if purged:
        log.info("purged %d expired Idempotency-Key answers", purged)
    return purged

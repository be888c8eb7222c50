"""Idempotency-Key on POST: a caller's retry gets the first answer and creates nothing new.

The key belongs to the caller (its API key; its address when it sends none): another caller
sending the same key and body is a different request and gets its own answer. The key is claimed
in PostgreSQL before the handler runs, so concurrent retries wait for the first to finish and
then replay its answer. Answers of 5xx are not kept: the client may retry those for real. Stored
answers are replayed for IDEMPOTENCY_TTL, then purged by beat (app/services/idempotency.py).
"""

from __future__ import annotations

import hashlib
import logging
import time

from flask import Flask, Response, g, request
from sqlalchemy.exc import DBAPIError

from app.api.auth import caller_identity
from app.errors import InProgress, Invalid, KeyReused
from app.services import idempotency

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
WAIT_FOR_FIRST_SECONDS = 30.0


def register_idempotency(app: Flask) -> None:
    """Make every POST honour the Idempotency-Key header."""

    @app.before_request
    def _claim_or_replay() -> Response | None:
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None:
            return None
        if not 1 <= len(key) <= 200 or not key.isprintable():
            raise Invalid(f"{HEADER} must be 1-200 printable characters.")
        scope, fingerprint = caller_identity(), _fingerprint()
        if idempotency.claim(scope, key, fingerprint):
            g.idempotency_key = (scope, key)
            return None
        return _replay(scope, key, fingerprint)

    @app.after_request
    def _remember(response: Response) -> Response:
        claimed: tuple[str, str] | None = g.pop("idempotency_key", None)
        if claimed is None:
            return response
        scope, key = claimed
        try:
            if response.status_code >= 500:
                idempotency.forget(scope, key)
            else:
                idempotency.remember(scope, key, response.status_code, response.get_data(True))
        except DBAPIError:
            # The database went away after the request's own commit: the answer still goes
            # out; a retry with this key waits, then gets 409 rather than a second creation.
            log.error("could not store the answer for Idempotency-Key %r", key)
        return response

    @app.teardown_request
    def _release_on_crash(_error: BaseException | None) -> None:
        claimed = g.pop("idempotency_key", None)
        if claimed is not None:
            try:
                idempotency.release(*claimed)
            except DBAPIError:
                log.error("could not release Idempotency-Key %r after a failed request", claimed[1])


def _fingerprint() -> str:
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    digest.update(request.get_data())
    return digest.hexdigest()


def _replay(scope: str, key: str, fingerprint: str) -> Response | None:
    """The stored answer to the caller's earlier request with this key, once it has one."""
    deadline = time.monotonic() + WAIT_FOR_FIRST_SECONDS
    while True:
        stored = idempotency.find(scope, key)
        if stored is None or (stored.expired and stored.status_code is not None):
            # The first request let go of the key, or its answer expired: this one runs instead.
            if idempotency.claim(scope, key, fingerprint):
                g.idempotency_key = (scope, key)
                return None
            continue
        if stored.fingerprint != fingerprint:
            raise KeyReused(f"This {HEADER} was used for a different request.")
        if stored.status_code is not None:
            response = Response(stored.body, status=stored.status_code, mimetype="application/json")
            response.headers["Idempotent-Replayed"] = "true"
            return response
        if time.monotonic() > deadline:
            raise InProgress(f"A request with this {HEADER} is still running.")
        time.sleep(0.05)

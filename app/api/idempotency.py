"""Idempotency-Key on POST: a retried request gets the first answer and creates nothing new.

The key is claimed in PostgreSQL before the handler runs, so concurrent retries with one key
wait for the first to finish and then replay its answer. Answers of 5xx are not kept: the client
may retry those for real.
"""

from __future__ import annotations

import hashlib
import logging
import time

from flask import Flask, Response, g, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.errors import error_body
from app.extensions import db

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
WAIT_FOR_FIRST_SECONDS = 30.0


def register_idempotency(app: Flask) -> None:
    """Make every POST honour the Idempotency-Key header."""

    @app.before_request
    def _claim_or_replay():
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None:
            return None
        if not 1 <= len(key) <= 200 or not key.isprintable():
            body = error_body(422, "invalid", f"{HEADER} must be 1-200 printable characters.")
            return jsonify(body), 422
        fingerprint = _fingerprint()
        if _claim(key, fingerprint):
            g.idempotency_key = key
            return None
        return _replay(key, fingerprint)

    @app.after_request
    def _remember(response: Response) -> Response:
        key = g.pop("idempotency_key", None)
        if key is None:
            return response
        try:
            with db.engine.begin() as connection:
                if response.status_code >= 500:
                    connection.execute(
                        text("DELETE FROM idempotency_keys WHERE key = :k"), {"k": key}
                    )
                else:
                    connection.execute(
                        text(
                            "UPDATE idempotency_keys SET status_code = :s, body = :b WHERE key = :k"
                        ),
                        {"k": key, "s": response.status_code, "b": response.get_data(as_text=True)},
                    )
        except DBAPIError:
            # The database went away after the request's own commit: the answer still goes
            # out; a retry with this key waits, then gets 409 rather than a second creation.
            log.error("could not store the answer for Idempotency-Key %r", key)
        return response

    @app.teardown_request
    def _release_on_crash(error: BaseException | None) -> None:
        key = g.pop("idempotency_key", None)
        if key is not None:
            try:
                with db.engine.begin() as connection:
                    connection.execute(
                        text("DELETE FROM idempotency_keys WHERE key = :k AND status_code IS NULL"),
                        {"k": key},
                    )
            except DBAPIError:
                log.error("could not release Idempotency-Key %r after a failed request", key)


def _fingerprint() -> str:
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    digest.update(request.get_data())
    return digest.hexdigest()


def _claim(key: str, fingerprint: str) -> bool:
    with db.engine.begin() as connection:
        inserted = connection.execute(
            text(
                "INSERT INTO idempotency_keys (key, fingerprint) VALUES (:k, :f)"
                " ON CONFLICT (key) DO NOTHING RETURNING key"
            ),
            {"k": key, "f": fingerprint},
        ).first()
    return inserted is not None


def _replay(key: str, fingerprint: str):
    deadline = time.monotonic() + WAIT_FOR_FIRST_SECONDS
    while True:
        with db.engine.connect() as connection:
            row = connection.execute(
                text("SELECT fingerprint, status_code, body FROM idempotency_keys WHERE key = :k"),
                {"k": key},
            ).first()
        if row is None:
            # The first request failed and let go of the key: this one may run instead.
            if _claim(key, fingerprint):
                g.idempotency_key = key
                return None
            continue
        if row.fingerprint != fingerprint:
            body = error_body(
                422, "idempotency_key_reused", f"This {HEADER} was used for a different request."
            )
            return jsonify(body), 422
        if row.status_code is not None:
            response = Response(row.body, status=row.status_code, mimetype="application/json")
            response.headers["Idempotent-Replayed"] = "true"
            return response
        if time.monotonic() > deadline:
            body = error_body(409, "in_progress", f"A request with this {HEADER} is still running.")
            return jsonify(body), 409
        time.sleep(0.05)

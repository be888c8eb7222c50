"""Fixtures on real PostgreSQL and Redis.

`make test` creates a database and claims a Redis DB number for this run and exports them as
DATABASE_URL and REDIS_URL. A test that touches them asks for `app` (or `client`, which brings
it) and starts from empty tables and an empty Redis DB; a test that needs neither asks for
neither, and nothing is migrated or emptied for it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest
import redis as redis_lib
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade

from app import create_app
from app.config import Settings
from app.extensions import db
from deploy.devstack import REDIS_CLAIM_KEY
from tests.fake_services import dead_url, fake_service  # noqa: F401
from tests.workers import WorkerProcess

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "data"


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the suite with `make test`", returncode=2)
    return value


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> Path:
    """A DATA_DIR holding the sample files that ship with the service."""
    target = tmp_path_factory.mktemp("data")
    for sample in SAMPLE_DATA.glob("*.*"):
        shutil.copy(sample, target / sample.name)
    return target


# Signs callbacks; kept in the environment like the admin key below, for the same reason.
CALLBACK_SECRET = os.environ.setdefault(
    "ORCHESTRATOR_TEST_CALLBACK_SECRET", "test-callback-secret-" + secrets.token_hex(8)
)

# This run's admin key (ADMIN_API_KEY): the test client sends it unless a test says otherwise.
# Kept in the environment so that every import of this module (pytest's, and `tests.conftest`
# from a test module) agrees on it.
ADMIN_KEY = os.environ.setdefault(
    "ORCHESTRATOR_TEST_ADMIN_KEY", "orch_test_" + secrets.token_urlsafe(16)
)


class KeyedClient(FlaskClient):
    """A test client that authenticates with the admin key unless given its own credentials."""

    def open(self, *args, **kwargs):
        headers = dict(kwargs.pop("headers", None) or {})
        if not any(name in headers for name in ("Authorization", "X-API-Key")):
            headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        return super().open(*args, headers=headers, **kwargs)


# Every app a test builds (some build their own, with other settings) gets the keyed client.
Flask.test_client_class = KeyedClient


@pytest.fixture(scope="session", autouse=True)
def requests_authenticate_on_loopback(tmp_path_factory):
    """`requests` reads NETRC: code that calls the service over HTTP (the spec's snippets word for
    word, the CLI, load generators) sends the admin key as HTTP Basic user name, as a user's
    ~/.netrc would."""
    netrc = tmp_path_factory.mktemp("netrc") / "netrc"
    netrc.write_text(
        "".join(
            f"machine {host} login {ADMIN_KEY} password -\n" for host in ("127.0.0.1", "localhost")
        )
    )
    netrc.chmod(0o600)
    # Apps and processes the tests start from the environment know the same admin key.
    previous = {name: os.environ.get(name) for name in ("NETRC", "ADMIN_API_KEY")}
    os.environ.update(NETRC=str(netrc), ADMIN_API_KEY=ADMIN_KEY)
    yield
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def test_env(sample_data_dir) -> dict[str, str]:
    """The environment every app and worker of this run uses."""
    return {
        "DATABASE_URL": _require("DATABASE_URL"),
        "REDIS_URL": _require("REDIS_URL"),
        "DATA_DIR": str(sample_data_dir),
        "MAX_BOTS": "50000",
        "ADMIN_API_KEY": ADMIN_KEY,
        # The stand-in AI services the tests start listen on loopback.
        "URL_ALLOWLIST": "127.0.0.1",
        # Signs callback deliveries; the test receivers check it.
        "CALLBACK_SECRET": CALLBACK_SECRET,
    }


@pytest.fixture(scope="session")
def migrated_app(test_env):
    """The Flask app on the run's database, migrated once (tests use `app`, which empties it)."""
    flask_app = create_app(Settings.from_env({**os.environ, **test_env}))
    with flask_app.app_context():
        upgrade()
    return flask_app


_RESTART_SEQUENCES = """
SELECT setval(s.seqrelid, s.seqstart, false)
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
 WHERE c.relnamespace = CAST(current_schema() AS regnamespace)
"""


def model_tables() -> list[str]:
    """Every table the models declare, parents before children: what a test may write to."""
    return [table.name for table in db.metadata.sorted_tables]


def empty_state(app) -> bytes | None:
    """Empty every table and the Redis DB (keeping the run's claim on it); returns the claim.

    Call inside an app context."""
    redis = app.extensions["redis"]
    # The run's claim on its Redis DB number must outlive every flush, or a concurrent run
    # could take the same DB.
    claim = redis.get(REDIS_CLAIM_KEY)
    # Every table the models declare, so a new table is emptied too (tests/test_isolation.py
    # checks that the database holds no other). DELETE, children first, and sequences back to
    # their start, in one round trip: measured 4-5 ms a test against 50-77 ms for TRUNCATE,
    # which makes new files for every table and index.
    emptying = "".join(f"DELETE FROM {table};" for table in reversed(model_tables()))
    db.session.connection().exec_driver_sql(emptying + _RESTART_SEQUENCES)
    db.session.commit()
    redis.flushdb()
    if claim:
        redis.set(REDIS_CLAIM_KEY, claim)
    return claim


@pytest.fixture()
def app(migrated_app):
    """The migrated app from empty tables and an empty Redis DB, inside its app context."""
    redis = migrated_app.extensions["redis"]
    with migrated_app.app_context():
        claim = empty_state(migrated_app)
        yield migrated_app
        db.session.rollback()
        db.session.remove()
    if claim:
        redis.set(REDIS_CLAIM_KEY, claim)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def anonymous_client(app):
    """A client that sends no key."""
    return FlaskClient(app, app.response_class, use_cookies=True)


@pytest.fixture()
def redis_client(app, test_env):
    """A client of the run's (emptied) Redis DB."""
    return redis_lib.Redis.from_url(test_env["REDIS_URL"])


@pytest.fixture()
def worker(app, test_env):
    """A real `celery worker` process on this run's broker and database."""
    process = WorkerProcess(test_env)
    process.start()
    yield process
    process.stop()

"""Schemathesis against /openapi.json, in process, with every check (schemathesis.toml).

Operation by operation (examples, coverage and fuzzing phases) and statefully, following the
document's links from creations to the operations that take their ids. `make test` runs a few
derandomized examples; `make fuzz` runs FUZZ_EXAMPLES (200) per operation and longer scenarios.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from unittest.mock import patch

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from app import create_app
from app.config import SERVICE_URL_VARIABLES, Settings
from tests.conftest import ADMIN_KEY, empty_state

# `make test` runs a few derandomized examples, `make fuzz` many; `make test-fast` none.
pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parent.parent
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
# Small swarms (the document's maximum follows MAX_BOTS), no rate limits, and a URL for every AI
# service (nothing calls it: no worker runs), so the budget goes into variety rather than into
# creating 50,000 bots or collecting 429s and "service not configured".
FUZZ_SETTINGS = {
    "MAX_BOTS": "300",
    "RATE_LIMIT": "",
    "RATE_LIMIT_HEAVY": "",
    **{variable: "http://127.0.0.1:9" for variable in SERVICE_URL_VARIABLES},
}


def _document_app():
    # Serving /openapi.json touches neither PostgreSQL nor Redis, so the schema can be read at
    # collection time, before the run's database exists. (schemathesis.pytest.from_fixture, the
    # lazy loader, does not work with pytest 9.)
    env = {"DATABASE_URL": "postgresql://unused/unused", "REDIS_URL": "redis://unused:6379/0"}
    return create_app(Settings.from_env({**env, **os.environ, **FUZZ_SETTINGS}))


# schemathesis.toml takes the key from ADMIN_API_KEY (as a `schemathesis run` would), read here.
with patch.dict(os.environ, {"ADMIN_API_KEY": ADMIN_KEY}):
    CONFIG = SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
schema = schemathesis.openapi.from_wsgi("/openapi.json", _document_app(), config=CONFIG)


@pytest.fixture(scope="module")
def fuzz_app(migrated_app, test_env):
    """The app under test: the run's (migrated) database and Redis, with FUZZ_SETTINGS."""
    return create_app(Settings.from_env({**os.environ, **test_env, **FUZZ_SETTINGS}))


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=timedelta(seconds=5),
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_every_generated_request_within_its_schema(case, app, fuzz_app):
    # `app` empties the tables and Redis first; the calls go to fuzz_app, on the same ones.
    case.call_and_validate(app=fuzz_app)


def test_linked_calls_keep_every_answer_within_its_schema(app, fuzz_app):
    class Scenarios(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self):
            # Each scenario from empty tables: which links can be followed depends on earlier
            # answers, and Hypothesis must be able to replay a scenario to shrink a failure.
            with fuzz_app.app_context():
                empty_state(fuzz_app)

        def get_call_kwargs(self, case):
            return {"app": fuzz_app}

    Scenarios.run(
        settings=settings(
            max_examples=FUZZ_EXAMPLES * 2,
            stateful_step_count=10,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )

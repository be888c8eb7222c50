"""create_app() assembles everything from the settings it is given: Celery, task types.

No PostgreSQL or Redis needed: building an app opens no connection.
"""

from __future__ import annotations

import pytest
from celery import Celery

from app import create_app, dispatch
from app.config import ConfigError, Settings
from app.dispatch import celery_of
from app.services import task_types

PLUGIN = "tests.plugins.faults"


def _app(**env: str):
    return create_app(
        Settings.from_env(
            {"DATABASE_URL": "postgresql://db.invalid/orchestrator", "LOG_FORMAT": "text", **env}
        )
    )


def test_each_app_publishes_to_the_broker_its_settings_name():
    first = _app(REDIS_URL="redis://127.0.0.1:6390/3", TASK_LEASE_SECONDS="60")
    second = _app(REDIS_URL="redis://127.0.0.1:6391/5")

    assert celery_of(first) is not celery_of(second)
    assert celery_of(first).conf.broker_url == "redis://127.0.0.1:6390/3"
    assert celery_of(second).conf.broker_url == "redis://127.0.0.1:6391/5"
    # Settings-dependent limits follow the lease; the rest comes from celeryconfig.py.
    conf = celery_of(first).conf
    assert conf.task_time_limit == 60
    assert conf.broker_transport_options["visibility_timeout"] == 240
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1


def test_the_publisher_module_holds_no_celery_of_its_own():
    # Configured at import from the environment it could not follow the app's settings.
    assert not [name for name, value in vars(dispatch).items() if isinstance(value, Celery)]


def test_a_celery_task_runs_inside_its_flask_app_context():
    flask_app = _app(REDIS_URL="redis://127.0.0.1:6390/3")
    celery = celery_of(flask_app)

    @celery.task(name="tests.which_app")
    def which_app() -> str:
        from flask import current_app

        return current_app.config["SETTINGS"].redis_url

    assert which_app() == "redis://127.0.0.1:6390/3"


def test_plugins_register_into_their_app_only():
    plain = _app(REDIS_URL="redis://127.0.0.1:6390/3")
    with_plugin = _app(REDIS_URL="redis://127.0.0.1:6390/3", TASK_TYPE_PLUGINS=PLUGIN)

    with with_plugin.app_context():
        assert task_types.get_task_type("sleep").chunk_size == 50
        assert task_types.get_task_type("echo") is task_types.BUILT_IN["echo"]
    with plain.app_context():
        assert "sleep" not in task_types.catalogue()
        assert task_types.chunk_size_of("sleep") == 1
    assert "sleep" not in task_types.BUILT_IN


def test_a_plugin_redefining_a_built_in_type_stops_the_start(tmp_path, monkeypatch):
    (tmp_path / "shadow_echo.py").write_text(
        "from app.services.task_types import TaskType\n"
        "TASK_TYPES = [TaskType('echo', 'not the real echo', None, 1, lambda task: None)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="redefines task type 'echo'"):
        _app(REDIS_URL="redis://127.0.0.1:6390/3", TASK_TYPE_PLUGINS="shadow_echo")


def test_each_app_documents_its_own_settings_and_task_types():
    plain = _app(REDIS_URL="redis://127.0.0.1:6390/3", MAX_BOTS="100")
    with_plugin = _app(
        REDIS_URL="redis://127.0.0.1:6390/3", MAX_BOTS="777", TASK_TYPE_PLUGINS=PLUGIN
    )

    def documented(flask_app) -> tuple[int, bool]:
        schemas = flask_app.test_client().get("/openapi.json").get_json()["components"]["schemas"]
        count = schemas["SwarmCreate"]["properties"]["count"]["maximum"]
        return count, "sleep" in schemas["TaskAssign"]["properties"]["type"]["enum"]

    # Asked in this order on purpose: the app built first must not describe the last one.
    assert documented(plain) == (100, False)
    assert documented(with_plugin) == (777, True)

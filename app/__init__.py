"""The Orchestrator Service: create_app() assembles everything, read top to bottom."""

from __future__ import annotations

from pathlib import Path

import redis
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import Settings
from app.dispatch import init_celery
from app.errors import register_error_handlers
from app.extensions import db, init_autocommit_engine, migrate
from app.logging import configure_logging, register_request_logging
from app.services import task_types


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app from settings (read from the environment when not given)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        SETTINGS=settings,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS={
            "pool_pre_ping": True,
            "pool_size": 5,
            "max_overflow": 10,
            # A dead database must cost a request seconds, not minutes. Prepared statements
            # (app/services/prepared.py) are planned for their parameters and the tables as they
            # are at each run: a generic plan cached while a table was small outlived its growth.
            "connect_args": {
                "connect_timeout": 2,
                "options": f"-c statement_timeout={settings.statement_timeout_ms}"
                " -c plan_cache_mode=force_custom_plan",
            },
        },
        SQLALCHEMY_TRACK_MODIFICATIONS=False,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        JSON_SORT_KEYS=False,
        API_TITLE="Orchestrator Service",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # the default provider has it
    configure_logging(settings.log_format)
    if settings.proxy_hops:
        # Only the address and scheme: nginx passes a client's X-Forwarded-Host through unchanged.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops
        )
    task_types.init_app(app, settings.task_type_plugins)

    db.init_app(app)
    init_autocommit_engine(app)
    migrate.init_app(app, db, directory=str(_migrations_dir()))
    app.extensions["redis"] = redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2
    )
    # Flask's Celery pattern: the publisher (and a worker's tasks) use this app's settings.
    init_celery(app, settings)

    from flask_smorest import Api

    from app.api import dashboard, metrics, register_blueprints
    from app.api.audit import register_audit
    from app.api.auth import register_auth
    from app.api.idempotency import register_idempotency
    from app.api.limits import register_body_limits, register_limits
    from app.api.openapi import DocumentPlugin
    from app.api.schemas import ErrorResponse

    # Request hooks run in the order registered: log, authenticate, then everything that may
    # depend on who is calling (rate limits per key, body checks, idempotency keys).
    register_request_logging(app)
    register_auth(app)
    # This app's own API object, so its document describes this app's settings and task types.
    rest_api = Api()
    # Before init_app, which documents every error status with it.
    rest_api.ERROR_SCHEMA = ErrorResponse
    rest_api.init_app(app, spec_kwargs={"extra_plugins": [DocumentPlugin(settings)]})
    register_blueprints(app, rest_api)
    # A plain Flask blueprint: HTML for people, kept out of the OpenAPI document.
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(metrics.bp)  # GET /metrics, for Prometheus
    # After rest_api.init_app, so these replace flask-smorest's own error handler.
    register_error_handlers(app)
    register_limits(app)
    register_body_limits(app)
    register_idempotency(app)
    register_audit(app)

    from app.cli import register_commands

    register_commands(app)
    return app


def _migrations_dir() -> Path:
    """migrations/ of the checkout, or app/migrations where `pip install .` put it."""
    installed = Path(__file__).resolve().parent / "migrations"
    return installed if installed.is_dir() else installed.parent.parent / "migrations"

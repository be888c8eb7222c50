"""The Celery app, whose tasks run inside a Flask app built once per worker process."""

from __future__ import annotations

from celery import Task
from celery.signals import setup_logging, worker_ready
from flask import Flask

from app import create_app, metrics
from app.config import Settings
from app.dispatch import celery
from app.logging import configure_logging, request_id_context

_flask_app: Flask | None = None


def flask_app() -> Flask:
    """The worker process's Flask app, built on first use (never at import)."""
    global _flask_app
    if _flask_app is None:
        _flask_app = create_app()
    return _flask_app


class AppContextTask(Task):
    """Runs every call inside the Flask app context, so services see the database."""

    abstract = True

    def __call__(self, *args, **kwargs):
        # The publisher put its request's id in the message headers (app/dispatch.py); Celery
        # exposes custom headers as attributes of the task request.
        with flask_app().app_context(), request_id_context(self.request.get("request_id")):
            return super().__call__(*args, **kwargs)


@setup_logging.connect
def _setup_logging(loglevel=None, **_kwargs) -> None:
    """Replace Celery's log setup with the service's (LOG_FORMAT); Celery then leaves it alone."""
    configure_logging(Settings.from_env().log_format, loglevel or "INFO", own=True)


@worker_ready.connect
def _serve_metrics(**_kwargs) -> None:
    """With WORKER_METRICS_PORT, serve the pool's counted events to Prometheus (app/metrics.py)."""
    port = Settings.from_env().worker_metrics_port
    if port:
        metrics.serve_worker_metrics(port)


celery.Task = AppContextTask

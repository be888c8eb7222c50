"""The Celery app, whose tasks run inside a Flask app built once per worker process."""

from __future__ import annotations

from celery import Task
from flask import Flask

from app import create_app
from app.dispatch import celery

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
        with flask_app().app_context():
            return super().__call__(*args, **kwargs)


celery.Task = AppContextTask

"""The execution pool: `celery -A workers worker|beat|flower`.

Workers import `app` (never the other way round); every Celery task runs inside the Flask app
context and only calls a service.
"""

# Registers the tasks on the Celery app.
from workers import tasks  # noqa: E402,F401
from workers.celery_app import celery

app = celery

__all__ = ["app", "celery"]

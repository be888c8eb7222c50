"""Gunicorn settings for the API: `gunicorn -c gunicorn.conf.py wsgi:app`.

PORT is the service's own variable (app/config.py); WEB_CONCURRENCY is gunicorn's convention for
the number of worker processes.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT') or '5003'}"
workers = int(os.environ.get("WEB_CONCURRENCY") or "2")
# Downstream AI calls are bounded by DOWNSTREAM_TIMEOUT (10 s default); 60 s leaves headroom.
timeout = 60
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
# Each worker builds its own app, so no database or Redis connection is shared across a fork.
preload_app = False


def child_exit(server, worker):
    """A worker died: let prometheus_client forget its live gauges (app/metrics.py)."""
    from app.metrics import mark_process_dead

    mark_process_dead(worker.pid)

"""Gunicorn settings for the API: `gunicorn -c gunicorn.conf.py wsgi:app`.

PORT is the service's own variable (app/config.py); WEB_CONCURRENCY is gunicorn's convention for
the number of worker processes.
"""

import os

from app.config import Settings
from app.logging import gunicorn_logconfig

bind = f"0.0.0.0:{os.environ.get('PORT') or '5003'}"
workers = int(os.environ.get("WEB_CONCURRENCY") or "2")
# Downstream AI calls are bounded by DOWNSTREAM_TIMEOUT (10 s default); 60 s leaves headroom.
timeout = 60
graceful_timeout = 30
keepalive = 5
# One log format: gunicorn's own lines as the app's (LOG_FORMAT), and no access log, since the app
# writes one line per request already (app/logging.py).
accesslog = None
logconfig_dict = gunicorn_logconfig(Settings.from_env().log_format)
# Each worker builds its own app, so no database or Redis connection is shared across a fork.
preload_app = False


def child_exit(server, worker):
    """A worker died: let prometheus_client forget its live gauges (app/metrics.py)."""
    from app.metrics import mark_process_dead

    mark_process_dead(worker.pid)

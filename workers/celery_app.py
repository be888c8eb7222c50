"""The worker's Celery: the one create_app() configured, with the tasks of workers/tasks.py.

Flask's Celery pattern: `celery -A workers` imports this module, which builds the Flask app once
from the environment and takes the Celery that create_app() configured from those settings
(app/dispatch.py:init_celery); every task runs inside that app's context. Building the app opens
no connection, and each pool process drops the database connections it inherited at fork.
"""

from __future__ import annotations

import gc
import logging

from celery import Celery
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.signals import setup_logging, worker_process_init, worker_ready

from app import create_app, metrics
from app.dispatch import celery_of
from app.extensions import autocommit_engine, db
from app.logging import configure_logging
from app.services import calls

# Allocations (less deallocations) between two collections of the youngest generation; Python's
# default is 700.
GC_FIRST_THRESHOLD = 20_000

flask_app = create_app()
celery: Celery = celery_of(flask_app)


@setup_logging.connect
def _setup_logging(loglevel=None, **_kwargs) -> None:
    """Replace Celery's log setup with the service's (LOG_FORMAT); Celery then leaves it alone."""
    configure_logging(flask_app.config["SETTINGS"].log_format, loglevel or "INFO", own=True)
    logging.getLogger().setLevel(loglevel or "INFO")
    # Celery's "Task ... succeeded" line per message repeats the worker's own line per chunk
    # (workers/tasks.py), which also carries the request id; a failing task still logs (ERROR),
    # and `--loglevel DEBUG` shows them all.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)


@worker_process_init.connect
def _fresh_connections(**_kwargs) -> None:
    """A forked pool process must not share the parent's database connections."""
    with flask_app.app_context():
        db.engine.dispose(close=False)
        autocommit_engine().dispose(close=False)


@worker_process_init.connect
def _collect_less(**_kwargs) -> None:
    """Keep the cyclic garbage collector off the objects a pool process starts with.

    A data task allocates millions of short-lived tuples and lists; at the default thresholds each
    full collection walked every object of the app, Celery and SQLAlchemy again, which was a third
    of a task's time (one task over 100,000 rows: 1.05 s, 0.74 s frozen with a larger first
    threshold). Our own objects seldom form cycles, so collecting less often costs little memory.
    """
    gc.freeze()
    gc.set_threshold(GC_FIRST_THRESHOLD, *gc.get_threshold()[1:])


@worker_ready.connect
def _serve_metrics(**_kwargs) -> None:
    """With WORKER_METRICS_PORT, serve the pool's counted events to Prometheus (app/metrics.py)."""
    port = flask_app.config["SETTINGS"].worker_metrics_port
    if port:
        metrics.serve_worker_metrics(port)


@worker_ready.connect
def _start_call_threads(sender=None, **_kwargs) -> None:
    """In the I/O pool (`-P threads`), start its call threads before the first message."""
    if isinstance(getattr(sender, "pool", None), ThreadPool):
        calls.start_call_threads(flask_app)

"""The app's Celery, and publishing work to the execution pool by task name.

Flask's Celery pattern: create_app() builds one Celery app from the settings it was given
(`init_celery`) and keeps it in `app.extensions["celery"]`; its tasks run inside that Flask
app's context. The API publishes by task name and never imports `workers`; the worker process
registers its tasks on the same Celery app (workers/celery_app.py).

Every publish happens after the rows it names are committed, so a worker never receives an id
whose row it cannot see.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery, Task
from flask import Flask, current_app

import celeryconfig
from app.config import Settings
from app.logging import current_request_id, request_id_context
from app.tiers import io_queue_for, queue_for

log = logging.getLogger(__name__)

EXECUTE_CHUNK = "orchestrator.execute_chunk"
# A chunk of calls to one downstream service, for the I/O pool (app/services/calls.py).
CALL_CHUNK = "orchestrator.call_chunk"
RECONCILE = "orchestrator.reconcile"
DELIVER_CALLBACK = "orchestrator.deliver_callback"
# Deliveries go to the L20 queue: a receiver hears the end of a run without waiting behind the
# next mass-action's backlog.
CALLBACK_QUEUE = "L20"


def init_celery(app: Flask, settings: Settings) -> Celery:
    """Build the app's Celery from its settings; every task runs inside this app's context."""

    class AppContextTask(Task):
        """Runs every call inside the Flask app context, so services see the database."""

        abstract = True

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            # The publisher put its request's id in the message headers (publish_chunks);
            # Celery exposes custom headers as attributes of the task request.
            with app.app_context(), request_id_context(self.request.get("request_id")):
                return super().__call__(*args, **kwargs)

    celery = Celery("orchestrator", task_cls=AppContextTask)
    celery.config_from_object(celeryconfig)
    celery.conf.update(celeryconfig.from_settings(settings))
    app.extensions["celery"] = celery
    return celery


def celery_of(app: Flask | None = None) -> Celery:
    """The Celery of `app` (by default the current one)."""
    return (app or current_app).extensions["celery"]


def chunked(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    """Split ids into lists of at most `size`."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def publish_chunks(
    task_ids: Sequence[int], tier: str, chunk_size: int, call_type: str | None = None
) -> int:
    """Send the committed tasks to their tier's queue, `chunk_size` ids per message.

    Tasks that call a downstream service (`call_type`, their task type) go to the tier's I/O
    queue as CALL_CHUNK messages instead, for the I/O pool.

    Returns how many messages went out. A broker failure is logged, not raised: the rows are
    committed and the reconciler publishes them once Redis answers again.
    """
    sent = 0
    # The worker logs each chunk under the id of the request that caused it.
    request_id = current_request_id()
    headers = {"request_id": request_id} if request_id else None
    celery = celery_of()
    try:
        with celery.producer_or_acquire() as producer:
            for chunk in chunked(task_ids, chunk_size):
                args: list[Any]
                if call_type is None:
                    name, args, queue = EXECUTE_CHUNK, [chunk], queue_for(tier)
                else:
                    name, args, queue = CALL_CHUNK, [chunk, tier, call_type], io_queue_for(tier)
                celery.send_task(name, args=args, queue=queue, producer=producer, headers=headers)
                sent += 1
    except Exception as error:  # kombu raises several unrelated types for a dead broker
        log.warning(
            "publish failed after %d of %d chunks for tier %s: %s; the reconciler will re-publish",
            sent,
            -(-len(task_ids) // chunk_size),
            tier,
            error,
        )
    return sent


def publish_calls(
    task_ids: Sequence[int], tier: str, call_type: str, countdown: float | None = None
) -> bool:
    """Send one CALL_CHUNK (no ids: a wake-up that drains the service's waiting line), maybe
    after `countdown` seconds; False if the broker refused (the reconciler re-publishes)."""
    try:
        celery_of().send_task(
            CALL_CHUNK,
            args=[list(task_ids), tier, call_type],
            queue=io_queue_for(tier),
            countdown=countdown,
        )
    except Exception as error:  # kombu raises several unrelated types for a dead broker
        log.warning("publishing %d calls for tier %s failed: %s", len(task_ids), tier, error)
        return False
    return True


def publish_callback(resource_id: str, countdown: float | None = None) -> None:
    """Send one callback delivery (after the commit that made it pending); failures are logged,
    the reconciler re-publishes."""
    try:
        celery_of().send_task(
            DELIVER_CALLBACK,
            args=[resource_id],
            queue=queue_for(CALLBACK_QUEUE),
            countdown=countdown,
        )
    except Exception as error:  # kombu raises several unrelated types for a dead broker
        log.warning(
            "publishing the callback of %s failed: %s; the reconciler will", resource_id, error
        )

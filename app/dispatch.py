"""Publishing work to the execution pool, by task name: the API never imports `workers`.

Every publish happens after the rows it names are committed, so a worker never receives an id
whose row it cannot see.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from celery import Celery

from app.logging import current_request_id
from app.tiers import queue_for

log = logging.getLogger(__name__)

EXECUTE_CHUNK = "orchestrator.execute_chunk"
RECONCILE = "orchestrator.reconcile"
DELIVER_CALLBACK = "orchestrator.deliver_callback"
# Deliveries go to the L20 queue: a receiver hears the end of a run without waiting behind the
# next mass-action's backlog.
CALLBACK_QUEUE = "L20"

celery = Celery("orchestrator")
celery.config_from_object("celeryconfig")


def chunked(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    """Split ids into lists of at most `size`."""
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def publish_chunks(task_ids: Sequence[int], tier: str, chunk_size: int) -> int:
    """Send the committed tasks to their tier's queue, `chunk_size` ids per message.

    Returns how many messages went out. A broker failure is logged, not raised: the rows are
    committed and the reconciler publishes them once Redis answers again.
    """
    sent = 0
    # The worker logs each chunk under the id of the request that caused it.
    request_id = current_request_id()
    headers = {"request_id": request_id} if request_id else None
    try:
        with celery.producer_or_acquire() as producer:
            for chunk in chunked(task_ids, chunk_size):
                celery.send_task(
                    EXECUTE_CHUNK,
                    args=[chunk],
                    queue=queue_for(tier),
                    producer=producer,
                    headers=headers,
                )
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


def publish_callback(resource_id: str, countdown: float | None = None) -> None:
    """Send one callback delivery (after the commit that made it pending); failures are logged,
    the reconciler re-publishes."""
    try:
        celery.send_task(
            DELIVER_CALLBACK,
            args=[resource_id],
            queue=queue_for(CALLBACK_QUEUE),
            countdown=countdown,
        )
    except Exception as error:  # kombu raises several unrelated types for a dead broker
        log.warning(
            "publishing the callback of %s failed: %s; the reconciler will", resource_id, error
        )

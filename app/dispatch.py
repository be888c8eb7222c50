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

"""The I/O pool: calls to downstream services run concurrently, up to each service's limit.

A CALL_CHUNK message (app/dispatch.py) names task ids of one AI type. The I/O pool (a Celery
worker with `-P threads` on the `io.<tier>` queues) runs it here:

1. `START` (app/services/inflight.py) puts the ids in the service's waiting line of their tier
   and, in the same Redis script, takes the free slots of the service for the first waiting ids
   (L20 first). A full service costs nothing: the ids wait in Redis, no thread or process holds
   them, and no message is re-sent to poll.
2. One claim statement takes the tasks the slots are for, with a short lease (LEASE_S) that a
   heartbeat of this process renews while their calls run, so a killed pool's tasks are handed
   back by the reconciler within a minute, however long a call may legitimately take.
3. Each call runs in the process's call threads (one round over the service's URLs: breaker,
   failover and URL guard, `registry.attempt`), with `Idempotency-Key: <task id>-<attempt>`.
   The chunk reads which URLs have a clean breaker once per BREAKER_READ_EVERY_S for all its
   calls (`breaker.read`); only the others, and any URL seen failing since, cost breaker round
   trips call by call.
4. As calls end, `REFILL` hands their slots straight to the next waiting ids (of any chunk); a
   slot is given back only when no one waits. Outcomes are recorded in batches, one statement
   each (app/services/outcomes.py), with each call's `duration_ms`.
5. A retryable failure does not sleep: the task goes back to `assigned` and a message with a
   countdown (the registry's backoff) brings it back. A 429's Retry-After also pauses the whole
   service (a Redis key): no slot is handed on while it lasts, and a wake-up message drains the
   lines when it ends.

Calls are at-least-once: a worker killed after the service answered but before the record runs
the call again on a later attempt, with a new Idempotency-Key attempt number but the same task id.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, current_app
from sqlalchemy import text

from app.clients.downstream import DownstreamError
from app.dispatch import publish_calls
from app.extensions import db
from app.models import TASK_COMPLETED, TASK_FAILED, TASK_RUNNING
from app.services import breaker, inflight, registry, task_rows, workflows
from app.services.execution import Claimed, claim
from app.services.outcomes import Outcome, record_outcomes
from app.services.payloads import load_payloads
from app.tiers import TIERS, io_queue_for

log = logging.getLogger(__name__)

# The lease of a claimed call and of its slot while its worker lives; renewed every HEARTBEAT_S.
LEASE_S = 30.0
HEARTBEAT_S = 10.0
# Outcomes are recorded once this many have ended, or after RECORD_EVERY_S.
RECORD_BATCH = 128
RECORD_EVERY_S = 0.2
# How often a chunk reads which URLs have a clean breaker (one round trip for all of them,
# instead of two per call; breaker.read).
BREAKER_READ_EVERY_S = 0.1
# How long the I/O pool's start waits for its call threads (start_call_threads).
CALL_THREADS_START_S = 30.0
# Threads of a process that record outcomes while the chunks go on handing slots to calls.
RECORDER_THREADS = 2

# The heartbeat never waits on a task row: one locked by a recorder is ending (its lease no longer
# matters), and one locked by anything else is renewed by the next beat, well inside its lease.
# Waiting instead, the heartbeat's many rows and a recorder's batch, each taken in its own order,
# deadlocked.
_RENEW_LEASES = """
UPDATE tasks SET lease_expires_at = now() + make_interval(secs => :lease)
 WHERE id IN (SELECT id FROM tasks WHERE id = ANY(:ids) AND status = 'running'
                FOR UPDATE SKIP LOCKED)
"""


@dataclass
class _Holding:
    """What one chunk holds right now, for the heartbeat."""

    service: str
    tokens: set[str]
    task_ids: set[int]


_holdings: dict[str, _Holding] = {}
_holdings_lock = threading.Lock()
_executor: tuple[int, ThreadPoolExecutor] | None = None
_recorders: tuple[int, ThreadPoolExecutor] | None = None
_heartbeat: tuple[int, threading.Thread] | None = None


def run_call_chunk(task_ids: list[int], tier: str, call_type: str) -> dict[str, int]:
    """Run a chunk of calls (or, with no ids, drain the service's waiting line); counts for
    the log."""
    try:
        view = registry.callable_view(call_type)
    except DownstreamError as error:
        return _fail_all(task_ids, f"{call_type}: {error}")
    return _Chunk(view, tier, call_type).run(task_ids)


def backlog(tier: str) -> int:
    """Calls of a tier waiting: messages in its I/O queue plus ids in every service's line."""
    client = _redis()
    lines = [inflight.line_key(view.name, tier) for view in registry.cached_views()]
    pipe = client.pipeline(transaction=False)
    pipe.llen(io_queue_for(tier))
    for key in lines:
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


def wake_waiting() -> int:
    """Send a drain message for every non-empty line (its holders may have died); how many."""
    sent = 0
    try:
        client = _redis()
        for view in registry.cached_views():
            if not view.task_types:
                continue
            for tier in TIERS:
                if client.llen(inflight.line_key(view.name, tier)):
                    sent += publish_calls([], tier, view.task_types[0])
    except redis.RedisError as error:
        log.warning("waking the waiting lines failed: %s", error)
    return sent


class _Chunk:
    """One CALL_CHUNK's run: slots taken, calls in flight, outcomes not yet recorded."""

    def __init__(self, view: registry.ServiceView, tier: str, call_type: str) -> None:
        self.view = view
        self.tier = tier
        self.call_type = call_type
        self.app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        self.client = _redis()
        self.id = uuid.uuid4().hex[:12]
        self.holding = _Holding(view.name, set(), set())
        self.in_flight: dict[Future, tuple[str, Claimed]] = {}
        self.idle: list[str] = []
        # Claimed tasks waiting for one of this chunk's slots, with their payloads.
        self.buffer: deque[tuple[Claimed, dict[str, Any]]] = deque()
        self.paused = False
        self.breakers = breaker.Reading()
        self.outcomes: list[Outcome] = []
        # Batches of outcomes being recorded in the recorder threads.
        self.recordings: list[Future] = []
        self.again: list[tuple[Claimed, float]] = []
        self.counts = {"received": 0, "called": 0, "recorded": 0, "retried": 0}
        slots = inflight.slots_key(view.name)
        pause = inflight.pause_key(view.name)
        lines = [inflight.line_key(view.name, t) for t in TIERS]
        self.start_keys = [slots, pause, inflight.line_key(view.name, tier), *lines]
        self.refill_keys = [slots, pause, *lines]
        self.take_keys = [pause, *lines]

    def run(self, task_ids: list[int]) -> dict[str, int]:
        self.counts["received"] = len(task_ids)
        try:
            reply = self.client.eval(
                inflight.START,
                len(self.start_keys),
                *self.start_keys,
                inflight.current_limit(self.view),
                LEASE_S,
                self.id,
                *task_ids,
            )
        except redis.RedisError as error:
            # The tasks stay assigned: the reconciler publishes them again once Redis answers.
            log.warning("calls of %s not started: %s", self.view.name, error)
            return self.counts
        tokens, ids = inflight.split_reply(reply)
        with _holdings_lock:
            _holdings[self.id] = self.holding
        _ensure_heartbeat(self.app)
        last_record = time.monotonic()
        try:
            self.idle.extend(tokens)
            self._claim_ahead(ids)
            while True:
                self._follow_limit()
                self._start_buffered()
                if not self.in_flight and not self.idle:
                    break
                if self.in_flight:
                    done, _ = wait(
                        list(self.in_flight), timeout=RECORD_EVERY_S, return_when=FIRST_COMPLETED
                    )
                    for future in done:
                        self._ended(future)
                    self._follow_limit()
                    self._start_buffered()
                held = len(self.in_flight) + len(self.idle)
                if held and len(self.buffer) * 2 < held and not self.paused:
                    # Claim the next waiting ids while the current calls run, so that a slot
                    # freed by a call starts the next one without a database round trip.
                    self._claim_ahead(self._take(held - len(self.buffer)))
                if self.idle and not self.buffer:
                    tokens, ids = self._refill()
                    self.idle.extend(tokens)
                    self._claim_ahead(ids)
                now = time.monotonic()
                if self.outcomes and (
                    len(self.outcomes) >= RECORD_BATCH
                    or now - last_record >= RECORD_EVERY_S
                    or not self.in_flight
                ):
                    self._record()
                    self._retry_later()
                    last_record = now
        finally:
            self._put_back_buffer()
            self._record()
            self._retry_later()
            self._give_back()
            self._collect_recordings(wait_all=True)
            with _holdings_lock:
                _holdings.pop(self.id, None)
        return self.counts

    # ---- steps -------------------------------------------------------------------------------

    def _claim_ahead(self, ids: list[int]) -> None:
        """Claim ids taken from the line; they wait in this chunk's buffer for a slot."""
        if not ids:
            return
        claimed = claim(ids, lease=LEASE_S)
        payloads = load_payloads({task.payload_id for task in claimed})
        db.session.rollback()
        for task in claimed:
            self.holding.task_ids.add(task.id)
            payload = {"type": task.type, "params": payloads.get(task.payload_id, {})}
            self.buffer.append((task, payload))

    def _start_buffered(self) -> None:
        """Give each idle slot the next claimed task, unless the service asked for a pause."""
        if not (self.idle and self.buffer):
            return
        if self._service_paused():
            self._put_back_buffer()
            return
        if time.monotonic() - self.breakers.at >= BREAKER_READ_EVERY_S:
            self.breakers = breaker.read(list(self.view.urls))
        while self.idle and self.buffer:
            token = self.idle.pop()
            task, payload = self.buffer.popleft()
            self.holding.tokens.add(token)
            future = _calls(self.app).submit(
                _call, self.app, self.view, task, payload, self.breakers
            )
            self.in_flight[future] = (token, task)
            self.counts["called"] += 1

    def _follow_limit(self) -> None:
        """A learned limit moves while calls run: before idle slots go to claimed tasks, give
        back those above it, and take free ones under it for claimed tasks that have none."""
        if not self.view.concurrency_auto or not self.buffer:
            return
        try:
            reply = self.client.eval(
                inflight.ADJUST,
                2,
                inflight.slots_key(self.view.name),
                inflight.pause_key(self.view.name),
                inflight.current_limit(self.view),
                LEASE_S,
                self.id,
                len(self.buffer),
                *self.idle,
            )
        except redis.RedisError as error:
            log.warning("following the limit of %s failed: %s", self.view.name, error)
            return
        self.idle = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]

    def _take(self, count: int) -> list[int]:
        try:
            reply = self.client.eval(inflight.TAKE, len(self.take_keys), *self.take_keys, count)
        except redis.RedisError as error:
            log.warning("taking waiting calls of %s failed: %s", self.view.name, error)
            return []
        return [int(v) for v in reply]

    def _service_paused(self) -> bool:
        if not self.paused:
            try:
                self.paused = bool(self.client.exists(inflight.pause_key(self.view.name)))
            except redis.RedisError:
                return False
        return self.paused

    def _put_back_buffer(self) -> None:
        """Claimed tasks not started: back to assigned and to the front of their line."""
        if not self.buffer:
            return
        ids = [task.id for task, _ in self.buffer]
        self.buffer.clear()
        for task_id in ids:
            self.holding.task_ids.discard(task_id)
        task_rows.requeue_running(ids)
        db.session.commit()
        self._requeue_in_line(ids)

    def _ended(self, future: Future) -> None:
        token, task = self.in_flight.pop(future)
        self.idle.append(token)
        self.holding.tokens.discard(token)
        self.holding.task_ids.discard(task.id)
        result, error, duration_ms = future.result()
        inflight.observe(self.view, error, duration_ms)
        if error is None:
            self.outcomes.append(
                Outcome(task.id, TASK_COMPLETED, result, None, task.attempt, duration_ms)
            )
            return
        if error.retryable and error.status == 429 and error.retry_after:
            self._pause(error.retry_after)
        if error.retryable and task.attempt < registry.rounds_allowed(task.retries):
            delay = max(registry.backoff_before(task.attempt + 1), error.retry_after or 0.0)
            self.again.append((task, delay))
            return
        message = f"{task.type}: {error}"
        self.outcomes.append(
            Outcome(task.id, TASK_FAILED, None, message, task.attempt, duration_ms)
        )

    def _record(self) -> None:
        """Record the outcomes so far in a recorder thread: the statement takes tens of
        milliseconds on a busy machine, and calls that end meanwhile get their slot's next task
        from this loop at once instead of waiting for it."""
        self._collect_recordings()
        if not self.outcomes:
            return
        outcomes, self.outcomes = self.outcomes, []
        self.recordings.append(_recorder_threads().submit(_record_batch, self.app, outcomes))

    def _collect_recordings(self, wait_all: bool = False) -> None:
        """Count the batches recorded; with wait_all, wait for every one (a failed one raises)."""
        pending = []
        for future in self.recordings:
            if wait_all or future.done():
                self.counts["recorded"] += future.result()
            else:
                pending.append(future)
        self.recordings = pending

    def _retry_later(self) -> None:
        if not self.again:
            return
        again, self.again = self.again, []
        ids = [task.id for task, _ in again]
        task_rows.requeue_running(ids)
        db.session.commit()
        self.counts["retried"] += len(ids)
        # One message for the chunk's retries, after the longest of their backoffs.
        publish_calls(ids, self.tier, self.call_type, countdown=max(d for _, d in again))

    def _refill(self) -> tuple[list[str], list[int]]:
        idle, self.idle = self.idle, []
        try:
            reply = self.client.eval(
                inflight.REFILL,
                len(self.refill_keys),
                *self.refill_keys,
                LEASE_S,
                inflight.current_limit(self.view),
                self.id,
                *idle,
            )
        except redis.RedisError as error:
            log.warning("handing on slots of %s failed: %s", self.view.name, error)
            return [], []
        return inflight.split_reply(reply)

    def _give_back(self) -> None:
        # Only after an error are slots left idle: free them, and let a wake-up drain the line.
        if not self.idle:
            return
        idle, self.idle = self.idle, []
        try:
            self.client.zrem(inflight.slots_key(self.view.name), *idle)
        except redis.RedisError:
            return  # their leases expire on their own
        publish_calls([], self.tier, self.call_type)

    def _requeue_in_line(self, ids: list[int]) -> None:
        try:
            self.client.lpush(inflight.line_key(self.view.name, self.tier), *reversed(ids))
        except redis.RedisError:
            return  # still assigned: the reconciler publishes them again
        # Anyone's slot may be free by now: a wake-up takes them from the line.
        publish_calls([], self.tier, self.call_type)

    def _pause(self, seconds: float) -> None:
        try:
            self.client.set(inflight.pause_key(self.view.name), "1", px=max(int(seconds * 1000), 1))
        except redis.RedisError:
            return
        publish_calls([], self.tier, self.call_type, countdown=seconds)


def _call(
    app: Flask,
    view: registry.ServiceView,
    task: Claimed,
    payload: dict[str, Any],
    breakers: breaker.Reading,
) -> tuple[Any, DownstreamError | None, float]:
    """One task's call, in a call thread: (result, error, duration in ms)."""
    started = time.perf_counter()
    with app.app_context():
        try:
            result = registry.attempt(
                view,
                payload,
                task.timeout or view.timeout_s,
                f"{task.id}-{task.attempt}",
                reading=breakers,
            )
            error: DownstreamError | None = None
        except DownstreamError as failure:
            result, error = None, failure
        except Exception as bug:  # a bug must fail its task, not strand the chunk
            log.exception("call of task-%d raised", task.id)
            result = None
            error = DownstreamError(f"internal error: {type(bug).__name__}", retryable=False)
    return result, error, (time.perf_counter() - started) * 1000


def _record_batch(app: Flask, outcomes: list[Outcome]) -> int:
    """Record one batch of outcomes, in a recorder thread (its own app context and session)."""
    with app.app_context():
        try:
            return record_outcomes(outcomes, (TASK_RUNNING,), on_workflows=workflows.on_steps_moved)
        finally:
            db.session.remove()


def _fail_all(task_ids: Iterable[int], message: str) -> dict[str, int]:
    claimed = claim(list(task_ids), lease=LEASE_S)
    outcomes = [Outcome(t.id, TASK_FAILED, None, message, t.attempt) for t in claimed]
    recorded = record_outcomes(outcomes, (TASK_RUNNING,), on_workflows=workflows.on_steps_moved)
    return {"received": len(list(task_ids)), "called": 0, "recorded": recorded, "retried": 0}


# ---- the process's call threads and heartbeat ------------------------------------------------


def _calls(app: Flask) -> ThreadPoolExecutor:
    """The process's call threads (IO_CALL_THREADS of them)."""
    global _executor
    pid = os.getpid()
    if _executor is None or _executor[0] != pid:
        with _holdings_lock:
            if _executor is None or _executor[0] != pid:
                threads = app.config["SETTINGS"].io_call_threads
                _executor = (pid, ThreadPoolExecutor(threads, thread_name_prefix="call"))
    return _executor[1]


def _recorder_threads() -> ThreadPoolExecutor:
    """The process's recorder threads (RECORDER_THREADS of them)."""
    global _recorders
    pid = os.getpid()
    if _recorders is None or _recorders[0] != pid:
        with _holdings_lock:
            if _recorders is None or _recorders[0] != pid:
                pool = ThreadPoolExecutor(RECORDER_THREADS, thread_name_prefix="record")
                _recorders = (pid, pool)
    return _recorders[1]


def start_call_threads(app: Flask) -> int:
    """Start every call thread of this process now, as the I/O pool starts: their stacks are
    then part of the pool's memory from the beginning instead of growing it during the first
    large fan-out. Returns how many threads run."""
    executor = _calls(app)
    count = app.config["SETTINGS"].io_call_threads
    # Each thread waits at the barrier, so every submit finds none idle and starts a new one.
    barrier = threading.Barrier(count + 1)
    for _ in range(count):
        executor.submit(barrier.wait, CALL_THREADS_START_S)
    try:
        barrier.wait(CALL_THREADS_START_S)
    except threading.BrokenBarrierError:
        log.warning("not every call thread started within %.0f s", CALL_THREADS_START_S)
    return len(threading.enumerate())


def _ensure_heartbeat(app: Flask) -> None:
    global _heartbeat
    pid = os.getpid()
    if _heartbeat is not None and _heartbeat[0] == pid and _heartbeat[1].is_alive():
        return
    with _holdings_lock:
        if _heartbeat is None or _heartbeat[0] != pid or not _heartbeat[1].is_alive():
            thread = threading.Thread(target=_beat, args=(app,), name="call-heartbeat", daemon=True)
            thread.start()
            _heartbeat = (pid, thread)


def _beat(app: Flask) -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        try:
            with app.app_context():
                renew_leases()
        except Exception as error:  # the next beat tries again; leases outlast two beats
            log.warning("renewing call leases failed: %s", error)


def renew_leases() -> int:
    """Renew the leases of every call this process holds (tasks and slots); how many tasks."""
    with _holdings_lock:
        held = [(h.service, list(h.tokens), list(h.task_ids)) for h in _holdings.values()]
    task_ids = [task_id for _, _, ids in held for task_id in ids]
    client = _redis()
    for service, tokens, _ in held:
        if tokens:
            client.eval(inflight.RENEW, 1, inflight.slots_key(service), LEASE_S, *tokens)
    if task_ids:
        db.session.execute(text(_RENEW_LEASES), {"ids": task_ids, "lease": LEASE_S})
        db.session.commit()
    db.session.remove()
    return len(task_ids)


def _redis() -> redis.Redis:
    return current_app.extensions["redis"]

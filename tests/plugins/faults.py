"""Task types that misbehave on purpose, for the reliability tests.

- `crash`: kills the worker process that runs it (a poison task).
- `sleep`: sleeps `seconds` (default 0.05) then returns, to keep a worker busy.
- `count`: records each execution in a Redis hash (`FAULTS_COUNT_REDIS_URL`, else `REDIS_URL`),
  field `<data.run>:<slice_index>`, then sleeps `data.seconds` (default 0), so a test can tell
  how many times each task of a mass-action really ran. Keep that Redis apart from the broker
  when the broker is flushed or restarted, or the record goes with it.
"""

from __future__ import annotations

import os
import time

import redis

from app.handlers import TaskInput
from app.services.task_types import TaskType

EXECUTIONS_KEY = "faults:executions"

_client: tuple[int, redis.Redis] | None = None


def execution_store() -> redis.Redis:
    """This process's client for the execution record (a forked pool process makes its own)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        url = os.environ.get("FAULTS_COUNT_REDIS_URL") or os.environ["REDIS_URL"]
        _client = (os.getpid(), redis.Redis.from_url(url, socket_timeout=5))
    return _client[1]


def execution_field(run: str, slice_index: int | None) -> str:
    """The hash field that counts one task's executions."""
    return f"{run}:{slice_index}"


def _crash(task: TaskInput) -> dict:
    os._exit(77)


def _sleep(task: TaskInput) -> dict:
    time.sleep(float(task.data.get("seconds", 0.05)))
    return {"slept": task.data.get("seconds", 0.05)}


def _count(task: TaskInput) -> dict:
    run = str(task.data.get("run", "default"))
    executions = execution_store().hincrby(
        EXECUTIONS_KEY, execution_field(run, task.slice_index), 1
    )
    seconds = float(task.data.get("seconds", 0))
    if seconds:
        time.sleep(seconds)
    return {"execution": executions}


TASK_TYPES = [
    TaskType("crash", "Kills its worker process.", None, 1, _crash),
    TaskType("sleep", "Sleeps, then returns.", None, 50, _sleep),
    TaskType("count", "Counts its own executions in Redis.", None, 100, _count),
]

"""The registry of task types: what capability each needs, how it runs, and its chunk size.

Chunk size is how many task ids one Celery message carries. Cheap built-ins take large chunks
(few messages for 50,000 tasks); slow types take small ones, so a chunk of slow work never holds
cheap or higher-priority work hostage for long.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app.clients.downstream import DownstreamError, call_service
from app.config import SERVICE_URL_VARIABLES
from app.errors import Invalid
from app.handlers import TaskFailed, TaskInput
from app.handlers.analysis import analyze
from app.handlers.data import process
from app.handlers.echo import echo
from app.handlers.reporting import report

Runner = Callable[[TaskInput], Any]


@dataclass(frozen=True)
class TaskType:
    """One kind of work a bot or a workflow step can be given."""

    name: str
    description: str
    capability: str | None
    chunk_size: int
    run: Runner
    service: str | None = None


@dataclass(frozen=True)
class DownstreamService:
    """One of the spec's AI services: where its URLs come from and which path serves the type."""

    name: str
    variable: str
    path: str


DOWNSTREAM: dict[str, DownstreamService] = {
    "image_generation": DownstreamService("image", "IMAGE_SERVICE_URL", "/generate"),
    "video_generation": DownstreamService("video", "VIDEO_SERVICE_URL", "/generate"),
    "crypto_prediction": DownstreamService("crypto", "CRYPTO_SERVICE_URL", "/predict"),
    "fraud_detection": DownstreamService("fraud", "FRAUD_SERVICE_URL", "/detect"),
    "compression": DownstreamService("compression", "COMPRESSION_SERVICE_URL", "/compress"),
    "marketing_analysis": DownstreamService("marketing", "MARKETING_SERVICE_URL", "/analyze"),
}
assert {s.variable for s in DOWNSTREAM.values()} == set(SERVICE_URL_VARIABLES)


def _downstream_runner(task_type: str) -> Runner:
    service = DOWNSTREAM[task_type]

    def run(task: TaskInput) -> Any:
        settings = current_app.config["SETTINGS"]
        urls = settings.service_urls.get(service.name) or []
        if not urls:
            raise TaskFailed(f"{service.variable} is not configured")
        try:
            return call_service(
                urls,
                service.path,
                {"type": task_type, "params": task.data},
                timeout=task.timeout or settings.downstream_timeout,
                **({} if task.retries is None else {"retries": task.retries}),
            )
        except DownstreamError as error:
            raise TaskFailed(f"{service.name} service: {error}") from error

    return run


_BUILT_IN = [
    TaskType("echo", "Returns its data; for health checks and benchmarks.", None, 2000, echo),
    TaskType(
        "data_processing",
        "Cleans, transforms, analyses or enriches records (inline or a file in DATA_DIR).",
        "data_processing",
        200,
        process,
    ),
    TaskType(
        "mass_data_processing",
        "data_processing meant for a whole swarm at once.",
        "data_processing",
        200,
        process,
    ),
    TaskType(
        "distributed_analysis",
        "Each bot analyses its own chunk_size slice of a dataset (sentiment or summary).",
        "analytics",
        20,
        analyze,
    ),
    TaskType("reporting", "Groups records and sums a metric per group.", "reporting", 100, report),
]

_AI = [
    TaskType(
        name,
        f"Calls the {service.name} service ({service.variable}) at {service.path}.",
        "ml_inference",
        5,
        _downstream_runner(name),
        service=service.name,
    )
    for name, service in DOWNSTREAM.items()
]

TASK_TYPES: dict[str, TaskType] = {t.name: t for t in _BUILT_IN + _AI}


def get_task_type(name: str) -> TaskType:
    """The registered type, or 422 listing the known ones."""
    task_type = TASK_TYPES.get(name)
    if task_type is None:
        raise Invalid(f"Unknown task type {name!r}.", field="type", known_types=sorted(TASK_TYPES))
    return task_type


def chunk_size_of(type_name: str) -> int:
    """How many task ids of this type one message carries (1 for a type no longer known)."""
    task_type = TASK_TYPES.get(type_name)
    return task_type.chunk_size if task_type else 1


def require_runnable(task_type: TaskType) -> None:
    """Refuse a downstream type whose service has no URL configured."""
    if task_type.name in DOWNSTREAM:
        service = DOWNSTREAM[task_type.name]
        if not current_app.config["SETTINGS"].service_urls.get(service.name):
            raise Invalid(
                f"Task type {task_type.name!r} needs the {service.name} service, "
                f"but {service.variable} is not configured.",
                missing_variable=service.variable,
            )


def require_capability(task_type: TaskType, capabilities: list[str], holder: str) -> None:
    """Refuse a type whose capability the bot or swarm lacks, naming it."""
    if task_type.capability and task_type.capability not in capabilities:
        raise Invalid(
            f"{holder} lacks the capability {task_type.capability!r} "
            f"that task type {task_type.name!r} needs.",
            missing_capability=task_type.capability,
        )


def describe_all() -> list[dict[str, Any]]:
    """Every type, for GET /task-types."""
    settings = current_app.config["SETTINGS"]
    return [
        {
            "name": t.name,
            "description": t.description,
            "capability": t.capability,
            "chunk_size": t.chunk_size,
            "service": t.service,
            "available": t.service is None or bool(settings.service_urls.get(t.service)),
        }
        for t in TASK_TYPES.values()
    ]

"""The catalogue of task types: what capability each needs, how it runs, and its chunk size.

Chunk size is how many task ids one Celery message carries. Cheap built-ins take large chunks
(few messages for 50,000 tasks); slow types take small ones, so a chunk of slow work never holds
cheap or higher-priority work hostage for long.

Each Flask app has its own catalogue (`app.extensions["task_types"]`, made by `init_app`): the
built-in types plus those of the plugin modules its settings name, so two apps in one process
(tests, a fault stack) never see each other's plugins.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from flask import Flask, current_app

from app.clients.downstream import DownstreamError
from app.config import ConfigError
from app.errors import Invalid
from app.handlers import TaskFailed, TaskInput
from app.handlers.analysis import analyze
from app.handlers.data import process
from app.handlers.echo import echo
from app.handlers.reporting import report
from app.services import registry
from app.services.service_defaults import DOWNSTREAM

Runner = Callable[[TaskInput], Any]

# Calls per message for the AI types: the I/O pool runs a chunk's calls concurrently, so a chunk
# is a unit of bookkeeping (one claim, one record), not of waiting.
AI_CHUNK_SIZE = 128


@dataclass(frozen=True)
class TaskType:
    """One kind of work a bot or a workflow step can be given."""

    name: str
    description: str
    capability: str | None
    chunk_size: int
    run: Runner
    service: str | None = None
    # Its handler waits on a downstream service: the I/O pool runs it (app/services/calls.py).
    calls_service: bool = False


def _downstream_runner(task_type: str) -> Runner:
    def run(task: TaskInput) -> Any:
        try:
            return registry.call(
                task_type,
                {"type": task_type, "params": task.data},
                timeout=task.timeout,
                retries=task.retries,
            )
        except DownstreamError as error:
            raise TaskFailed(f"{task_type}: {error}") from error

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
        "Sentiment or a column summary of a dataset; on a swarm each bot takes its part.",
        "analytics",
        20,
        analyze,
    ),
    TaskType("reporting", "Groups records and sums a metric per group.", "reporting", 100, report),
]

_AI = [
    TaskType(
        name,
        f"Calls the service registered for it (by default {service.name}: "
        f"{service.variable}, {service.path}).",
        "ml_inference",
        AI_CHUNK_SIZE,
        _downstream_runner(name),
        service=service.name,
        calls_service=True,
    )
    for name, service in DOWNSTREAM.items()
]

BUILT_IN: Mapping[str, TaskType] = MappingProxyType({t.name: t for t in _BUILT_IN + _AI})


def init_app(app: Flask, plugin_modules: Sequence[str]) -> None:
    """Give the app its catalogue: the built-in types and those its plugin modules declare."""
    app.extensions["task_types"] = load_catalogue(plugin_modules)


def load_catalogue(plugin_modules: Sequence[str]) -> Mapping[str, TaskType]:
    """The built-in types and those the plugin modules declare, by name.

    A plugin is any importable module (TASK_TYPE_PLUGINS names them) whose TASK_TYPES holds
    TaskType objects; a name that is already taken stops the start.
    """
    types = dict(BUILT_IN)
    for module_name in plugin_modules:
        module = importlib.import_module(module_name)
        for task_type in getattr(module, "TASK_TYPES", []):
            known = types.get(task_type.name)
            if known is not None and known is not task_type:
                raise ConfigError(
                    f"TASK_TYPE_PLUGINS: {module_name} redefines task type {task_type.name!r}"
                )
            types[task_type.name] = task_type
    return MappingProxyType(types)


def catalogue() -> Mapping[str, TaskType]:
    """The current app's task types, by name."""
    return current_app.extensions["task_types"]


def get_task_type(name: str) -> TaskType:
    """The registered type, or 422 listing the known ones."""
    types = catalogue()
    task_type = types.get(name)
    if task_type is None:
        raise Invalid(f"Unknown task type {name!r}.", field="type", known_types=sorted(types))
    return task_type


def chunk_size_of(type_name: str) -> int:
    """How many task ids of this type one message carries (1 for a type no longer known)."""
    task_type = catalogue().get(type_name)
    return task_type.chunk_size if task_type else 1


def route_of(type_name: str) -> dict[str, Any]:
    """publish_chunks' arguments for tasks of this type: chunk size, and the I/O pool or not."""
    task_type = catalogue().get(type_name)
    if task_type is None:
        return {"chunk_size": 1}
    call_type = task_type.name if task_type.calls_service else None
    return {"chunk_size": task_type.chunk_size, "call_type": call_type}


def require_runnable(task_type: TaskType) -> None:
    """Refuse a downstream type whose service has no URL in the registry."""
    if task_type.name in DOWNSTREAM:
        configured, variable = registry.is_configured(task_type.name)
        if not configured:
            service = registry.service_for_task_type(task_type.name)
            name = service.name if service else DOWNSTREAM[task_type.name].name
            raise Invalid(
                f"Task type {task_type.name!r} needs the {name} service, "
                f"but {variable} is not configured (or PUT /services/{name} with its URLs).",
                missing_variable=variable,
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
    """Every type, for GET /task-types; downstream types name the service the registry gives."""
    serving = registry.services_by_task_type()
    described = []
    for t in catalogue().values():
        view = serving.get(t.name)
        downstream = t.name in DOWNSTREAM
        described.append(
            {
                "name": t.name,
                "description": t.description,
                "capability": t.capability,
                "chunk_size": t.chunk_size,
                "service": view.name if view else None,
                "available": not downstream or bool(view and view.urls),
            }
        )
    return described

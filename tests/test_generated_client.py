"""A typed client generated from /openapi.json (openapi-python-client) runs the spec's flows.

Every answer must parse into the model the document names for it: not None, not a raw dict, and
holding exactly the fields that came over the wire, at every level.
Generation runs offline, into a temporary directory, from the document this app serves.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest

from app import create_app
from app.config import Settings
from app.extensions import db
from tests.conftest import ADMIN_KEY
from tests.workers import WorkerProcess, wait_for

PACKAGE = "orchestrator_client"

SPEC_BOT = {
    "name": "bot-worker-1",
    "tier": "L20",
    "capabilities": ["data_processing", "analytics", "reporting"],
}
SPEC_BOT_TASK = {
    "type": "data_processing",
    "data": {"input_file": "data.csv", "operations": ["clean", "transform", "analyze"]},
}
# The spec's swarm, smaller: its size changes no shape.
SPEC_SWARM = {
    "name": "processing-swarm",
    "count": 20,
    "tier": "L20",
    "capabilities": ["data_processing", "analytics", "ml_inference"],
}
SPEC_MASS_ACTION = {
    "type": "distributed_analysis",
    "data": {"dataset": "large_dataset.csv", "analysis_type": "sentiment", "chunk_size": 1000},
}
SPEC_WORKFLOW = {
    "tasks": [
        {"type": "image_generation", "params": {"prompt": "Sunset landscape"}},
        {"type": "crypto_prediction", "params": {"symbol": "BTC"}},
    ],
    "priority": "high",
}


@pytest.fixture(scope="module")
def generated(test_env, tmp_path_factory):
    """The generated package, imported: `.api`, `.models`, `.client`."""
    workdir = tmp_path_factory.mktemp("generated-client")
    document = workdir / "openapi.json"
    # The document of an app with the run's settings (each app serves its own).
    fresh = create_app(Settings.from_env({**os.environ, **test_env}))
    document.write_text(fresh.test_client().get("/openapi.json").get_data(as_text=True))
    config = workdir / "config.json"
    # No post hooks: generation must not depend on tools outside the virtualenv.
    config.write_text(json.dumps({"post_hooks": [], "package_name_override": PACKAGE}))
    result = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
         "--output-path", str(workdir / PACKAGE), "--meta", "none", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The generator warns about any part of the document it could not turn into code.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr

    sys.path.insert(0, str(workdir))
    try:
        package = importlib.import_module(PACKAGE)
        api = SimpleNamespace(
            **{
                name: importlib.import_module(f"{PACKAGE}.api.{group}.{name}")
                for group in (
                    "bots",
                    "swarms",
                    "tasks",
                    "workflows",
                    "system",
                    "services",
                    "scaling",
                )
                for name in _modules_of(workdir / PACKAGE / "api" / group)
            }
        )
        yield SimpleNamespace(
            api=api,
            models=importlib.import_module(f"{PACKAGE}.models"),
            client=package,
        )
    finally:
        sys.path.remove(str(workdir))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _modules_of(directory) -> list[str]:
    return [path.stem for path in directory.glob("*.py") if path.stem != "__init__"]


@pytest.fixture()
def services_and_worker(app, test_env, fake_service):
    """The two AI services of the spec's workflow, an app that knows them (on the emptied
    database), and a worker."""
    image = fake_service(default=(200, {"image_url": "https://img.example/sunset.png"}))
    crypto = fake_service(default=(200, {"symbol": "BTC", "prediction": 67250.5}))
    urls = {"IMAGE_SERVICE_URL": image.url, "CRYPTO_SERVICE_URL": crypto.url}
    configured = create_app(Settings.from_env({**os.environ, **test_env, **urls}))
    worker = WorkerProcess(test_env, extra_env=urls)
    worker.start()
    try:
        yield configured
    finally:
        worker.stop()
        with configured.app_context():
            db.engine.dispose()


def _parsed(response, model, status: int):
    """The answer's model, checked: the documented status, the documented model, and the same
    fields at every level as the JSON that came over the wire (none dropped, none unknown)."""
    assert response.status_code == status, response.content
    assert isinstance(response.parsed, model), (type(response.parsed), response.content)
    _assert_same_fields(json.loads(response.content), response.parsed.to_dict(), model.__name__)
    return response.parsed


def _assert_same_fields(sent, parsed, where: str) -> None:
    if isinstance(sent, dict) and isinstance(parsed, dict):
        assert set(sent) == set(parsed), f"{where}: answered {sorted(sent)}, model {sorted(parsed)}"
        for key in sent:
            _assert_same_fields(sent[key], parsed[key], f"{where}.{key}")
    elif isinstance(sent, list) and isinstance(parsed, list):
        assert len(sent) == len(parsed), where
        for index, (left, right) in enumerate(zip(sent, parsed, strict=True)):
            _assert_same_fields(left, right, f"{where}[{index}]")


@pytest.mark.slow
def test_generated_client_runs_the_spec_flows_and_parses_every_answer(
    generated, services_and_worker
):
    api, models = generated.api, generated.models
    transport = httpx.WSGITransport(app=services_and_worker)
    client = generated.client.AuthenticatedClient(
        base_url="http://orchestrator.test", token=ADMIN_KEY, httpx_args={"transport": transport}
    )

    # Health first, as a load balancer would; /health needs no key.
    plain = generated.client.Client(
        base_url="http://orchestrator.test", httpx_args={"transport": transport}
    )
    health = _parsed(api.get_health.sync_detailed(client=plain), models.Health, 200)
    assert health.status == models.HealthStatus.HEALTHY

    # Bots: create, read, give a task, complete another one by hand.
    bot = _parsed(
        api.create_bot.sync_detailed(client=client, body=models.BotCreate.from_dict(SPEC_BOT)),
        models.BotOut,
        201,
    )
    assert (bot.name, bot.tier, bot.status) == (
        "bot-worker-1",
        models.BotOutTier.L20,
        models.BotOutStatus.ACTIVE,
    )
    assert bot.tasks_completed == 0
    read = _parsed(api.get_bot.sync_detailed(bot.id, client=client), models.BotOut, 200)
    assert read.id == bot.id

    assigned = _parsed(
        api.assign_task.sync_detailed(
            bot.id, client=client, body=models.TaskAssign.from_dict(SPEC_BOT_TASK)
        ),
        models.TaskAssigned,
        202,
    )
    assert assigned.bot_id == bot.id

    def bot_task_ended():
        task = api.get_task.sync_detailed(assigned.task_id, client=client).parsed
        return task if task.status.value in ("completed", "failed") else None

    task = wait_for(bot_task_ended)
    _parsed(api.get_task.sync_detailed(assigned.task_id, client=client), models.TaskDetail, 200)
    assert task.status.value == "completed", task.error
    assert task.data.to_dict() == SPEC_BOT_TASK["data"]

    by_hand = _parsed(
        api.assign_task.sync_detailed(
            bot.id, client=client, body=models.TaskAssign.from_dict({"type": "echo"})
        ),
        models.TaskAssigned,
        202,
    )
    # The worker may have run it already; completing it by hand then changes nothing (409 if so).
    done = api.complete_task.sync_detailed(
        bot.id,
        by_hand.task_id,
        client=client,
        body=models.TaskComplete.from_dict({"result": {"ok": True}}),
    )
    if done.status_code == 200:
        _parsed(done, models.TaskOut, 200)
    else:
        _parsed(done, models.ErrorResponse, 409)
    tasks = _parsed(api.list_tasks.sync_detailed(bot.id, client=client), models.TaskList, 200)
    assert {item.task_id for item in tasks.items} == {assigned.task_id, by_hand.task_id}

    # A swarm and a mass-action over it.
    swarm = _parsed(
        api.create_swarm.sync_detailed(
            client=client, body=models.SwarmCreate.from_dict(SPEC_SWARM)
        ),
        models.SwarmCreated,
        201,
    )
    assert len(swarm.bot_ids) == swarm.bot_count == 20
    mass = _parsed(
        api.assign_to_swarm.sync_detailed(
            swarm.id, client=client, body=models.TaskAssign.from_dict(SPEC_MASS_ACTION)
        ),
        models.MassAssigned,
        202,
    )
    assert mass.assignments == 20
    scaled = _parsed(
        api.update_swarm.sync_detailed(
            swarm.id, client=client, body=models.SwarmUpdate.from_dict({"count": 25})
        ),
        models.SwarmOut,
        200,
    )
    assert scaled.bot_count == 25
    _parsed(api.get_swarm.sync_detailed(swarm.id, client=client), models.SwarmOut, 200)
    _parsed(api.list_swarms.sync_detailed(client=client), models.SwarmList, 200)
    _parsed(api.list_bots.sync_detailed(client=client, tier="l20"), models.BotList, 200)

    # The spec's workflow, to its end, step results included.
    workflow = _parsed(
        api.orchestrate.sync_detailed(
            client=client, body=models.Orchestrate.from_dict(SPEC_WORKFLOW)
        ),
        models.WorkflowOut,
        202,
    )

    def workflow_ended():
        answer = api.get_task.sync_detailed(workflow.task_id, client=client)
        return answer if answer.parsed.status.value in ("completed", "failed") else None

    finished = _parsed(wait_for(workflow_ended), models.WorkflowOut, 200)
    assert finished.status.value == "completed"
    assert [step.result for step in finished.steps] == [
        {"image_url": "https://img.example/sunset.png"},
        {"symbol": "BTC", "prediction": 67250.5},
    ]

    # Cancelling a task: answered as the task (or 409 if the worker started it first).
    waiting = _parsed(
        api.assign_task.sync_detailed(
            bot.id, client=client, body=models.TaskAssign.from_dict({"type": "echo"})
        ),
        models.TaskAssigned,
        202,
    )
    cancelled = api.cancel_task.sync_detailed(waiting.task_id, client=client)
    if cancelled.status_code == 200:
        _parsed(cancelled, models.TaskDetail, 200)
    else:
        _parsed(cancelled, models.ErrorResponse, 409)

    # The service-wide views.
    stats = _parsed(api.bot_stats.sync_detailed(client=client), models.BotStats, 200)
    assert stats.tier_distribution.l20 == 26
    _parsed(api.list_services.sync_detailed(client=client), models.ServiceList, 200)
    _parsed(api.get_service.sync_detailed("image", client=client), models.ServiceOut, 200)
    _parsed(api.list_task_types.sync_detailed(client=client), models.TaskTypeList, 200)
    scaling = _parsed(api.get_scaling.sync_detailed(client=client), models.Scaling, 200)
    assert scaling.per_worker_rate_source.value in ("given", "measured", "default")

    # Retiring, and a refusal, which parses as the documented error.
    _parsed(api.retire_bot.sync_detailed(bot.id, client=client), models.BotOut, 200)
    _parsed(api.retire_swarm.sync_detailed(swarm.id, client=client), models.SwarmOut, 200)
    missing = _parsed(
        api.get_bot.sync_detailed("bot-missing", client=client), models.ErrorResponse, 404
    )
    assert missing.error.status == 404

"""GET /metrics: counters summed across a real gunicorn (two workers) and a real Celery worker
through one PROMETHEUS_MULTIPROC_DIR, state gauges that agree with the API, and the gate."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.models import ROLES
from app.services import keys
from deploy.devstack import free_port
from tests.test_end_to_end import wait_for
from tests.workers import WorkerProcess, gunicorn_serving

ROOT = Path(__file__).resolve().parent.parent
N = 400
TIER = "advanced"
# Every label name the service may use: none of them can hold a bot or a task id.
ALLOWED_LABELS = {"tier", "task_type", "status", "state", "outcome", "service", "url", "le"}
# `kind`: what the retention job deleted (tasks, workflows, audit, payloads).
ALLOWED_LABELS |= {"dependency", "kind"}
# `locktype`: PostgreSQL's lock types (a dozen); `operation`, `reason`: the statements the service
# retries and why (deadlock, connection).
ALLOWED_LABELS |= {"locktype", "operation", "reason"}
# `mode`: a service's max_concurrency, fixed or learned ("auto").
ALLOWED_LABELS |= {"mode"}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a text exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def total(found: dict, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


@pytest.fixture()
def metrics_dir(tmp_path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.fixture()
def image_service(fake_service):
    return fake_service(default=(200, {"image": "sunset.png"}))


@pytest.fixture()
def shared_env(test_env, metrics_dir, image_service) -> dict[str, str]:
    """What the API and the worker both get: one metrics directory, the fake image service."""
    return {
        **test_env,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "IMAGE_SERVICE_URL": image_service.url,
        "LOG_FORMAT": "text",
    }


@pytest.fixture()
def api(app, shared_env, tmp_path):
    """`gunicorn -c gunicorn.conf.py wsgi:app` with two workers and /metrics open, on the
    emptied database."""
    env = {**shared_env, "WEB_CONCURRENCY": "2", "METRICS_PUBLIC": "1"}
    with gunicorn_serving(env, tmp_path / "gunicorn.log") as url:
        yield url


@pytest.mark.slow
def test_metrics_add_up_api_and_worker_processes_and_agree_with_the_api(
    api, shared_env, test_env, metrics_dir, image_service
):
    key = test_env.get("ADMIN_API_KEY")
    http = requests.Session()
    if key:
        http.headers["Authorization"] = f"Bearer {key}"

    def scrape(url: str = api) -> dict:
        response = requests.get(f"{url}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain")
        return samples(response.text)

    swarm = http.post(
        f"{api}/swarms",
        json={"name": "metrics", "count": N, "tier": TIER, "capabilities": ["ml_inference"]},
        timeout=30,
    ).json()
    bot_ids = swarm["bot_ids"] if "bot_ids" in swarm else [b["id"] for b in swarm["bots"]]
    assert len(bot_ids) == N
    assigned = http.post(
        f"{api}/swarms/{swarm['id']}/tasks", json={"type": "echo", "data": {"n": 1}}, timeout=30
    )
    assert assigned.status_code == 202 and assigned.json()["assignments"] == N
    call = http.post(
        f"{api}/bots/{bot_ids[0]}/tasks",
        json={"type": "image_generation", "data": {"prompt": "Sunset"}},
        timeout=30,
    )
    assert call.status_code == 202, call.text

    # No worker yet: the backlog shows in the state gauges, read from PostgreSQL and Redis.
    waiting = scrape()
    assert value(waiting, "orchestrator_tasks_open", tier=TIER, state="assigned") == N + 1
    assert value(waiting, "orchestrator_tasks_open", tier="L20", state="assigned") == 0
    assert value(waiting, "orchestrator_queue_messages", tier=TIER) >= 2
    assert value(waiting, "orchestrator_oldest_waiting_task_seconds", tier=TIER) > 0
    assert value(waiting, "orchestrator_tasks_assigned_total", tier=TIER, task_type="echo") == N
    assert value(waiting, "orchestrator_dependency_up", dependency="postgres") == 1
    assert value(waiting, "orchestrator_dependency_up", dependency="redis") == 1

    worker_port = free_port()
    worker = WorkerProcess(shared_env, extra_env={"WORKER_METRICS_PORT": str(worker_port)})
    worker.start()
    try:

        def done() -> dict | None:
            found = scrape()
            echo = value(found, "orchestrator_tasks_completed_total", tier=TIER, task_type="echo")
            image = value(
                found, "orchestrator_tasks_completed_total", tier=TIER, task_type="image_generation"
            )
            # A chunk's counters and histograms are written one after the other: wait for all.
            started = value(found, "orchestrator_task_assignment_to_start_seconds_count", tier=TIER)
            finished = value(
                found,
                "orchestrator_task_assignment_to_finish_seconds_count",
                tier=TIER,
                outcome="completed",
            )
            return found if (echo, image, started, finished) == (N, 1, N + 1, N + 1) else None

        found = wait_for(done, timeout=30, interval=0.2)
        worker_side = scrape(f"http://127.0.0.1:{worker_port}")
    finally:
        worker.stop()

    # Counted once each, wherever they were counted.
    assert total(found, "orchestrator_tasks_failed_total") == 0
    assert total(found, "orchestrator_tasks_assigned_total", tier=TIER) == N + 1
    assert value(found, "orchestrator_task_assignment_to_start_seconds_count", tier=TIER) == N + 1
    finish = "orchestrator_task_assignment_to_finish_seconds_count"
    assert value(found, finish, tier=TIER, outcome="completed") == N + 1
    infinity = value(
        found, "orchestrator_task_assignment_to_start_seconds_bucket", tier=TIER, le="+Inf"
    )
    assert infinity == N + 1
    # The mass-action ended once, in whichever pool process recorded its last chunk.
    durations = "orchestrator_mass_action_duration_seconds_count"
    ended = value(found, durations, tier=TIER, task_type="echo", outcome="completed")
    assert ended == 1
    assert total(found, durations) == 1
    # The worker's own exporter serves the same counters from the same directory.
    assert (
        value(worker_side, "orchestrator_tasks_completed_total", tier=TIER, task_type="echo") == N
    )
    # Files from several processes (two gunicorn workers, the pool) were added up.
    assert len({re.sub(r"^\w+?_", "", p.stem) for p in metrics_dir.glob("*.db")}) >= 3

    # The downstream call, with its outcome and latency, and the URL's breaker.
    url = image_service.url
    assert len(image_service.requests) == 1
    calls = "orchestrator_downstream_calls_total"
    assert value(found, calls, service="image", url=url, outcome="success") == 1
    assert value(found, "orchestrator_downstream_call_seconds_count", service="image", url=url) == 1
    breaker = "orchestrator_breaker_state"
    assert value(found, breaker, service="image", url=url, state="closed") == 1
    assert value(found, breaker, service="image", url=url, state="open") == 0

    # The queues are empty again.
    for tier in ("L20", "advanced", "standard"):
        assert value(found, "orchestrator_tasks_open", tier=tier, state="assigned") == 0
        assert value(found, "orchestrator_tasks_open", tier=tier, state="running") == 0
        assert value(found, "orchestrator_oldest_waiting_task_seconds", tier=tier) == 0
        assert value(found, "orchestrator_queue_messages", tier=tier) == 0

    # Live bots and capacity agree with GET /bots/stats, paused bots included.
    assert http.patch(f"{api}/bots/{bot_ids[1]}", json={"status": "paused"}, timeout=10).ok
    found = scrape()
    stats = http.get(f"{api}/bots/stats", timeout=10).json()
    assert total(found, "orchestrator_bots_live") == stats["live_bots"] == N
    assert total(found, "orchestrator_bots_live", status="active") == stats["active_bots"] == N - 1
    assert value(found, "orchestrator_bots_live", tier=TIER, status="paused") == 1
    for tier, count in stats["tier_distribution"].items():
        assert total(found, "orchestrator_bots_live", tier=tier) == count
    assert value(found, "orchestrator_capacity_used_bots") == stats["live_bots"]
    assert value(found, "orchestrator_capacity_bots") == 50_000
    assert value(found, "orchestrator_capacity_used_ratio") == pytest.approx(N / 50_000)

    # No label is per bot or per task.
    for (_name, labels), _value in found.items():
        assert {name for name, _ in labels} <= ALLOWED_LABELS
        for _label, label_value in labels:
            assert not label_value.startswith(("bot-", "task-", "swarm-")), label_value
            assert label_value not in bot_ids


def test_metrics_answer_keys_without_a_tenant_and_configured_scrapers(app, monkeypatch):
    client = app.test_client()
    settings = app.config["SETTINGS"]
    assert not settings.metrics_public and settings.metrics_token is None
    exposition = "orchestrator_dependency_up"

    # A viewer, an operator and an admin key read it, and so does ADMIN_API_KEY.
    for role in ROLES:
        key = keys.create_key(f"{role}-reader", role)[1]
        answered = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert answered.status_code == 200, (role, answered.get_data(as_text=True))
        assert exposition in answered.get_data(as_text=True)
    assert client.get("/metrics").status_code == 200
    # Like every view of the whole service, not a key limited to a tenant.
    tenant_key = keys.create_key("tenant-reader", "viewer", "tenant-a")[1]
    refused = client.get("/metrics", headers={"Authorization": f"Bearer {tenant_key}"})
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "forbidden"
    # No key, or a text that is no key: 401 JSON.
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.get_json()["error"]["code"] == "unauthorized"

    # A scraper with METRICS_TOKEN needs no API key; a wrong token is no key either.
    monkeypatch.setitem(app.config, "SETTINGS", replace(settings, metrics_token="s3cret"))
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answered = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert answered.status_code == 200
    assert exposition in answered.get_data(as_text=True)

    # METRICS_PUBLIC opens it to anyone.
    monkeypatch.setitem(app.config, "SETTINGS", replace(settings, metrics_public=True))
    answered = client.get("/metrics", headers={"Authorization": ""})
    assert answered.status_code == 200
    assert exposition in answered.get_data(as_text=True)
    assert "/metrics" not in client.get("/openapi.json").get_data(as_text=True)


def test_weighted_observation_matches_observing_one_by_one():
    one_by_one, weighted = (
        Histogram("h", "h", ["tier"], buckets=metrics.WAIT_BUCKETS, registry=CollectorRegistry())
        for _ in range(2)
    )
    for amount, n in ((0.003, 5), (0.7, 1), (42.0, 7), (5000.0, 2)):
        for _ in range(n):
            one_by_one.labels("L20").observe(amount)
        metrics._observe_many(weighted.labels("L20"), amount, n)
    assert [s for m in one_by_one.collect() for s in m.samples if "created" not in s.name] == [
        s for m in weighted.collect() for s in m.samples if "created" not in s.name
    ]


def test_grafana_dashboard_queries_only_metrics_the_service_exports(app, monkeypatch):
    settings = replace(app.config["SETTINGS"], metrics_public=True)
    monkeypatch.setitem(app.config, "SETTINGS", settings)
    exposition = app.test_client().get("/metrics").get_data(as_text=True)
    exported = set(re.findall(r"^# TYPE (orchestrator_\w+) ", exposition, re.M))
    exported = {re.sub(r"_total$", "", name) for name in exported}

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "orchestrator.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for query in queries
        for name in re.findall(r"orchestrator_\w+", query)
    }
    assert len(queries) >= 12
    assert used and used <= exported, used - exported

"""GET /scaling: the worker count an autoscaler should use, and the k8s files that use it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from app.extensions import db
from app.services import scaling
from app.services.scaling import Policy, TierLoad, recommend, workers_for
from app.tiers import IO_QUEUES, TIER_QUEUES, TIERS

ROOT = Path(__file__).resolve().parent.parent
POLICY = Policy(target_drain_seconds=60, min_workers=0, max_workers=20, per_worker_rate=10)


def idle() -> dict[str, TierLoad]:
    return {tier: TierLoad() for tier in TIERS}


# ---- the formula ---------------------------------------------------------------------------


def test_nothing_open_recommends_the_minimum() -> None:
    assert recommend(idle(), POLICY).desired_workers == 0
    assert recommend(idle(), Policy(min_workers=3, max_workers=20)).desired_workers == 3
    assert recommend(idle(), POLICY).tiers == {tier: 0 for tier in TIERS}


def test_a_backlog_needs_workers_in_proportion() -> None:
    # 10 tasks/s per worker for 60 s = 600 tasks per worker.
    assert workers_for(TierLoad(waiting_tasks=1), POLICY) == 1
    assert workers_for(TierLoad(waiting_tasks=600), POLICY) == 1
    assert workers_for(TierLoad(waiting_tasks=601), POLICY) == 2
    assert workers_for(TierLoad(waiting_tasks=3000), POLICY) == 5
    # Running tasks keep a worker: scaling to zero would kill them mid-flight.
    assert workers_for(TierLoad(running_tasks=3), POLICY) == 1


def test_old_waits_raise_the_recommendation_at_most_tenfold() -> None:
    fresh = workers_for(TierLoad(waiting_tasks=3000), POLICY)
    half_late = workers_for(TierLoad(waiting_tasks=3000, oldest_waiting_seconds=30), POLICY)
    overdue = workers_for(TierLoad(waiting_tasks=3000, oldest_waiting_seconds=600), POLICY)
    # Overdue: the budget floors at 6 s, so 3,000 / (10 * 6) = 50 workers, capped at 20.
    assert (fresh, half_late, overdue) == (5, 10, 20)


def test_bounds_hold_per_tier_and_in_all() -> None:
    huge = {tier: TierLoad(waiting_tasks=1_000_000) for tier in TIERS}
    result = recommend(huge, POLICY)
    assert result.tiers == {tier: 20 for tier in TIERS}
    assert result.desired_workers == 20
    capped = Policy(min_workers=2, max_workers=4, per_worker_rate=10)
    assert recommend({**idle(), "L20": TierLoad(waiting_tasks=1)}, capped).desired_workers == 2
    assert recommend(huge, capped).desired_workers == 4


def test_anything_open_gets_at_least_one_worker_even_with_min_zero() -> None:
    loads = {**idle(), "standard": TierLoad(waiting_tasks=1)}
    result = recommend(loads, POLICY)
    assert result.desired_workers == 1
    assert result.tiers == {"L20": 0, "advanced": 0, "standard": 1}


def test_tiers_add_up_in_the_pool() -> None:
    loads = {**idle(), "L20": TierLoad(waiting_tasks=1200), "standard": TierLoad(waiting_tasks=1)}
    result = recommend(loads, POLICY)
    assert result.tiers == {"L20": 2, "advanced": 0, "standard": 1}
    assert result.desired_workers == 3


def test_rate_comes_from_the_caller_then_measurement_then_default(app) -> None:
    assert scaling.per_worker_rate(5.0, 100.0, 4) == (5.0, "given")
    assert scaling.per_worker_rate(None, 100.0, 4) == (25.0, "measured")
    assert scaling.per_worker_rate(None, 100.0, None) == (
        scaling.DEFAULT_PER_WORKER_RATE,
        "default",
    )
    assert scaling.per_worker_rate(None, None, 4) == (scaling.DEFAULT_PER_WORKER_RATE, "default")


# ---- measured throughput -------------------------------------------------------------------


def set_finished(completed: int, failed: int = 0) -> None:
    db.session.execute(
        text(
            "INSERT INTO counters (name, value) VALUES ('tasks_completed', :c), ('tasks_failed', :f)"
            " ON CONFLICT (name, shard) DO UPDATE SET value = excluded.value"
        ),
        {"c": completed, "f": failed},
    )
    db.session.commit()


def test_throughput_is_measured_from_counter_samples_in_redis(redis_client) -> None:
    set_finished(100, 10)
    assert scaling.sample_throughput(now=1_000.0) is None  # no window yet
    set_finished(400, 10)
    assert scaling.sample_throughput(now=1_010.0) is None  # 10 s is too short a window
    set_finished(700, 20)
    # (720 - 410) finished over the 30 s since the newest sample at least 30 s old.
    assert scaling.sample_throughput(now=1_040.0) == pytest.approx(310 / 30, abs=0.001)
    assert redis_client.zcard(scaling.SAMPLES_KEY) == 3


def test_counters_going_backwards_give_no_throughput(app) -> None:
    set_finished(500)
    scaling.sample_throughput(now=2_000.0)
    set_finished(0)
    assert scaling.sample_throughput(now=2_060.0) is None


# ---- the endpoint on a real backlog --------------------------------------------------------


def test_backlog_without_workers_asks_for_workers_on_its_tier_only(client) -> None:
    assert client.get("/scaling").get_json()["desired_workers"] == 0

    swarm = client.post(
        "/swarms", json={"name": "backlog", "count": 1500, "tier": "L20", "capabilities": []}
    ).get_json()
    assigned = client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo", "data": {}})
    assert assigned.status_code == 202

    response = client.get("/scaling")
    assert response.status_code == 200
    body = response.get_json()
    l20 = body["tiers"]["L20"]
    assert l20["waiting_tasks"] == 1500
    assert l20["running_tasks"] == 0
    assert l20["queue_depth"] >= 1  # echo travels 2,000 ids per message
    assert l20["oldest_waiting_seconds"] is not None
    # 1,500 tasks at the default 10/s per worker within 60 s: 3 workers.
    assert l20["desired_workers"] == 3
    assert body["tiers"]["standard"]["desired_workers"] == 0
    assert body["tiers"]["advanced"]["desired_workers"] == 0
    assert body["desired_workers"] == 3
    assert body["per_worker_rate_source"] == "default"

    faster = client.get("/scaling?per_worker_rate=100&max_workers=5").get_json()
    assert faster["tiers"]["L20"]["desired_workers"] == 1
    assert faster["per_worker_rate_source"] == "given"
    floor = client.get("/scaling?min_workers=2&max_workers=2").get_json()
    assert floor["tiers"]["advanced"]["desired_workers"] == 0
    assert floor["desired_workers"] == 2


def test_bad_policy_is_refused_with_422(client) -> None:
    response = client.get("/scaling?min_workers=5&max_workers=2")
    assert response.status_code == 422
    assert "min_workers" in response.get_json()["error"]["fields"]["query"]
    assert client.get("/scaling?target_drain_s=0").status_code == 422


# ---- deploy/k8s agrees with docker-compose.yml and the queues ------------------------------


def k8s_documents() -> list[dict]:
    documents = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def compose_command(service: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service]
    command = spec["command"]
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def test_k8s_deployments_run_the_compose_commands_from_one_image() -> None:
    from app.config import KNOWN_VARIABLES

    documents = k8s_documents()
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    assert {"orchestrator-api", "orchestrator-worker", "orchestrator-beat"} <= set(deployments)
    images = set()
    for name, service in (("api", "api"), ("worker", "worker"), ("beat", "beat")):
        container = deployments[f"orchestrator-{name}"]["spec"]["template"]["spec"]["containers"][0]
        images.add(container["image"])
        assert container["command"] == compose_command(service)
        for variable in container.get("env", []):
            assert variable["name"] in KNOWN_VARIABLES
    assert len(images) == 1
    # One beat only, or every periodic job runs twice.
    assert deployments["orchestrator-beat"]["spec"]["replicas"] == 1
    services = [d for d in documents if d["kind"] == "Service"]
    assert any(s["spec"]["ports"][0]["targetPort"] == 5003 for s in services)


@pytest.mark.parametrize(
    "target, queues",
    [("orchestrator-worker", TIER_QUEUES), ("orchestrator-worker-io", IO_QUEUES)],
)
def test_keda_scales_each_pool_on_its_own_queues(target, queues) -> None:
    scaled = {
        d["spec"]["scaleTargetRef"]["name"]: d["spec"]
        for d in k8s_documents()
        if d["kind"] == "ScaledObject"
    }
    assert set(scaled) == {"orchestrator-worker", "orchestrator-worker-io"}
    spec = scaled[target]
    lists = [t["metadata"]["listName"] for t in spec["triggers"] if t["type"] == "redis"]
    assert sorted(lists) == sorted(queues)
    config = next(d for d in k8s_documents() if d["kind"] == "ConfigMap")
    assert all(
        t["metadata"]["databaseIndex"] == config["data"]["REDIS_DB"] for t in spec["triggers"]
    )


def test_k8s_config_sets_only_known_variables() -> None:
    from app.config import KNOWN_VARIABLES

    config = next(d for d in k8s_documents() if d["kind"] == "ConfigMap")
    assert set(config["data"]) <= set(KNOWN_VARIABLES)


def test_the_io_pool_is_sized_by_open_calls_capped_by_the_services_limits(client) -> None:
    idle = client.get("/scaling").get_json()["io_pool"]
    assert (idle["open_calls"], idle["desired_workers"]) == (0, 0)
    put = client.put(
        "/services/image", json={"urls": ["http://127.0.0.1:9"], "max_concurrency": 100}
    )
    assert put.status_code == 200, put.get_json()
    swarm = client.post(
        "/swarms",
        json={"name": "calls", "count": 300, "tier": "standard", "capabilities": ["ml_inference"]},
    ).get_json()
    assigned = client.post(
        f"/swarms/{swarm['id']}/tasks", json={"type": "image_generation", "data": {}}
    )
    assert assigned.status_code == 202, assigned.get_json()

    io_pool = client.get("/scaling").get_json()["io_pool"]
    assert io_pool["open_calls"] == 300
    assert io_pool["in_flight"] == 0
    # 300 open calls, but the services allow 100 in flight at once: 2 workers of 64 calls.
    assert io_pool["total_limit"] >= 100
    assert io_pool["desired_workers"] == -(-min(300, io_pool["total_limit"]) // 64)

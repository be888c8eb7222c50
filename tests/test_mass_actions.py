"""Mass-actions as resources: the 202's id, progress from counters, results, aggregate, cancel."""

from __future__ import annotations

import datetime
import json
import re
from types import MappingProxyType

import pytest
from sqlalchemy import text

from app.extensions import db
from app.services import aggregates, execution, mass_action_events, mass_actions, partials
from tests.plugins import faults
from tests.workers import WorkerProcess, wait_for

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
MASS_ACTION_ID = re.compile(r"^ma-[0-9a-f]{16}$")
CAPABILITIES = ["data_processing", "analytics", "reporting"]
NDJSON = {"Accept": "application/x-ndjson"}


def create_swarm(client, count: int, tier: str = "standard", **headers) -> dict:
    response = client.post(
        "/swarms",
        json={"name": "s", "count": count, "tier": tier, "capabilities": CAPABILITIES},
        **headers,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def start(client, swarm_id: str, type_name: str = "echo", data=None, **headers) -> dict:
    response = client.post(
        f"/swarms/{swarm_id}/tasks", json={"type": type_name, "data": data or {}}, **headers
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()


def progress(client, mass_action_id: str) -> dict:
    response = client.get(f"/mass-actions/{mass_action_id}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def ended(client, mass_action_id: str, timeout: float = 60.0) -> dict:
    def finished():
        body = progress(client, mass_action_id)
        return body if body["finished_at"] is not None else None

    return wait_for(finished, timeout=timeout)


@pytest.fixture()
def sleep_type(app, monkeypatch):
    """The `sleep` task type of tests/plugins/faults.py, known to the in-process API too; the
    environment a worker needs to know it."""
    [sleep] = [t for t in faults.TASK_TYPES if t.name == "sleep"]
    monkeypatch.setitem(
        app.extensions,
        "task_types",
        MappingProxyType({**app.extensions["task_types"], "sleep": sleep}),
    )
    return {"TASK_TYPE_PLUGINS": "tests.plugins.faults"}


# ---- identity ----------------------------------------------------------------------------------


def test_the_202_keeps_every_spec_field_and_adds_the_mass_action_id_and_location(client):
    swarm = create_swarm(client, 5)

    response = client.post(
        f"/swarms/{swarm['id']}/tasks",
        json={
            "type": "distributed_analysis",
            "data": {
                "dataset": "large_dataset.csv",
                "analysis_type": "sentiment",
                "chunk_size": 10,
            },
        },
    )

    assert response.status_code == 202
    body = response.get_json()
    assert set(body) == {
        "swarm_id",
        "task_type",
        "assignments",
        "status",
        "timestamp",
        "mass_action_id",
    }
    assert (body["swarm_id"], body["task_type"], body["assignments"], body["status"]) == (
        swarm["id"],
        "distributed_analysis",
        5,
        "distributed",
    )
    assert ISO.match(body["timestamp"])
    assert MASS_ACTION_ID.match(body["mass_action_id"])
    assert response.headers["Location"] == f"/mass-actions/{body['mass_action_id']}"

    view = client.get(response.headers["Location"]).get_json()
    assert view["id"] == body["mass_action_id"]
    assert (view["swarm_id"], view["task_type"], view["tier"]) == (
        swarm["id"],
        "distributed_analysis",
        "standard",
    )
    assert view["counts"] == {
        "total": 5,
        "assigned": 5,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert (view["status"], view["percent"], view["started_at"], view["finished_at"]) == (
        "queued",
        0.0,
        None,
        None,
    )
    assert (view["tasks_per_second"], view["eta_seconds"]) == (None, None)
    assert ISO.match(view["created_at"])
    assert view["results"] == f"/mass-actions/{body['mass_action_id']}/results"
    # Every task row knows its mass-action.
    tagged = db.session.execute(
        text("SELECT count(*) FROM tasks WHERE mass_action_id = :id"),
        {"id": body["mass_action_id"]},
    ).scalar_one()
    assert tagged == 5


def test_a_swarm_lists_its_mass_actions_newest_first_in_pages(client):
    swarm = create_swarm(client, 2)
    other = create_swarm(client, 2)
    ids = [start(client, swarm["id"])["mass_action_id"] for _ in range(5)]
    start(client, other["id"])

    first = client.get(f"/swarms/{swarm['id']}/mass-actions?limit=2").get_json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    assert first["next_after"] == ids[3]
    second = client.get(
        f"/swarms/{swarm['id']}/mass-actions?limit=2&after={first['next_after']}"
    ).get_json()
    third = client.get(
        f"/swarms/{swarm['id']}/mass-actions?limit=2&after={second['next_after']}"
    ).get_json()
    seen = [item["id"] for page in (first, second, third) for item in page["items"]]
    assert seen == ids[::-1]
    assert third["next_after"] is None
    assert first["items"][0]["counts"]["total"] == 2
    assert first["items"][0]["aggregate"] is None  # lists carry progress, not aggregates


def test_listing_mass_actions_of_an_unknown_swarm_or_cursor_is_404(client):
    swarm = create_swarm(client, 1)
    assert client.get("/swarms/swarm-0000000000000000/mass-actions").status_code == 404
    response = client.get(f"/swarms/{swarm['id']}/mass-actions?after=ma-0000000000000000")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_an_unknown_mass_action_is_404_for_every_route(client):
    for method, path in (
        ("GET", "/mass-actions/ma-0000000000000000"),
        ("GET", "/mass-actions/ma-0000000000000000/results"),
        ("DELETE", "/mass-actions/ma-0000000000000000"),
        ("POST", "/mass-actions/ma-0000000000000000/cancel"),
    ):
        response = client.open(path, method=method)
        assert response.status_code == 404, (method, path)
        assert response.get_json()["error"]["code"] == "not_found"
    response = client.get("/mass-actions/ma-0000000000000000/results", headers=NDJSON)
    assert response.status_code == 404
    assert response.get_json()["error"]["status"] == 404


def test_a_mass_action_on_a_swarm_without_active_bots_ends_at_once(client):
    swarm = create_swarm(client, 2)
    for bot_id in swarm["bot_ids"]:
        client.patch(f"/bots/{bot_id}", json={"status": "paused"})

    body = start(client, swarm["id"])

    assert body["assignments"] == 0
    view = progress(client, body["mass_action_id"])
    assert view["status"] == "completed"
    assert view["percent"] == 100.0
    assert view["finished_at"] == view["created_at"]
    assert view["eta_seconds"] == 0.0


def test_a_workflow_step_on_a_swarm_links_to_its_mass_action(client):
    swarm = create_swarm(client, 3)

    workflow = client.post(
        "/orchestrate",
        json={"tasks": [{"type": "echo", "swarm_id": swarm["id"]}, {"type": "echo"}]},
    ).get_json()

    step, plain = workflow["steps"]
    assert MASS_ACTION_ID.match(step["mass_action_id"])
    assert plain["mass_action_id"] is None
    view = progress(client, step["mass_action_id"])
    assert (view["workflow_id"], view["step"], view["counts"]["total"]) == (
        workflow["task_id"],
        0,
        3,
    )
    listed = client.get(f"/swarms/{swarm['id']}/mass-actions").get_json()["items"]
    assert [item["id"] for item in listed] == [step["mass_action_id"]]
    again = client.get(f"/task/{workflow['task_id']}").get_json()
    assert again["steps"][0]["mass_action_id"] == step["mass_action_id"]


# ---- results -----------------------------------------------------------------------------------


def test_results_page_in_task_order_and_filter_by_status(client):
    swarm = create_swarm(client, 7)
    mass_action_id = start(client, swarm["id"], data={"n": 1})["mass_action_id"]
    task_ids = [
        row[0]
        for row in db.session.execute(
            text("SELECT id FROM tasks WHERE mass_action_id = :id ORDER BY id"),
            {"id": mass_action_id},
        )
    ]
    for task_id in task_ids[:3]:
        bot_id = db.session.execute(
            text("SELECT bot_id FROM tasks WHERE id = :id"), {"id": task_id}
        ).scalar_one()
        done = client.post(
            f"/bots/{bot_id}/tasks/task-{task_id}/complete", json={"result": {"k": task_id}}
        )
        assert done.status_code == 200

    pages, after = [], None
    while True:
        query = f"?limit=3&after={after}" if after else "?limit=3"
        response = client.get(f"/mass-actions/{mass_action_id}/results{query}")
        assert response.status_code == 200
        assert response.mimetype == "application/json"
        page = response.get_json()
        pages.append(page)
        after = page["next_after"]
        if after is None:
            break

    items = [item for page in pages for item in page["items"]]
    assert [item["task_id"] for item in items] == [f"task-{i}" for i in task_ids]
    assert [len(page["items"]) for page in pages] == [3, 3, 1]
    assert items[0]["result"] == {"k": task_ids[0]}
    assert items[0]["status"] == "completed"
    assert ISO.match(items[0]["finished_at"])
    assert items[5]["status"] == "assigned" and items[5]["result"] is None
    assert set(items[0]) == {
        "task_id",
        "bot_id",
        "slice_index",
        "status",
        "attempts",
        "result",
        "error",
        "started_at",
        "finished_at",
    }
    completed = client.get(f"/mass-actions/{mass_action_id}/results?status=completed").get_json()
    assert [item["task_id"] for item in completed["items"]] == [f"task-{i}" for i in task_ids[:3]]


def test_results_stream_as_ndjson_with_the_same_items_as_the_pages(client, monkeypatch):
    monkeypatch.setattr(mass_actions, "STREAM_BATCH", 4)  # several batches for ten tasks
    swarm = create_swarm(client, 10)
    mass_action_id = start(client, swarm["id"])["mass_action_id"]
    # Text that must be escaped, as a failed task's error and a completed one's result.
    [first, second] = _task_ids(mass_action_id)[:2]
    tricky = 'said "no"\nthen \\ left \u2603 \t'
    assert execution.run_chunk([second]) == {"received": 1, "claimed": 1, "recorded": 1}
    db.session.execute(
        text("UPDATE tasks SET status = 'failed', error = :e WHERE id = :id"),
        {"e": tricky, "id": first},
    )
    db.session.execute(
        text("UPDATE tasks SET result = CAST(:r AS jsonb) WHERE id = :id"),
        {"r": json.dumps({"text": tricky, "n": [1, 2.5, None]}), "id": second},
    )
    db.session.commit()
    paged = client.get(f"/mass-actions/{mass_action_id}/results?limit=1000").get_json()["items"]
    assert paged[0]["error"] == tricky and paged[0]["status"] == "failed"
    assert paged[1]["result"] == {"text": tricky, "n": [1, 2.5, None]}

    response = client.get(f"/mass-actions/{mass_action_id}/results", headers=NDJSON)

    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    body = response.get_data(as_text=True)
    assert body.endswith("\n")
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines == paged
    assert len(lines) == 10
    after = client.get(
        f"/mass-actions/{mass_action_id}/results?after={paged[6]['task_id']}", headers=NDJSON
    ).get_data(as_text=True)
    assert [json.loads(line) for line in after.splitlines()] == paged[7:]


@pytest.mark.parametrize(
    "query",
    ["?after=7", "?after=task-x", "?limit=0", "?limit=1001", "?status=done", "?limit=abc"],
)
def test_bad_result_queries_are_422(client, query):
    swarm = create_swarm(client, 1)
    mass_action_id = start(client, swarm["id"])["mass_action_id"]

    response = client.get(f"/mass-actions/{mass_action_id}/results{query}")

    assert response.status_code == 422
    assert response.get_json()["error"]["status"] == 422


# ---- keys and tenants --------------------------------------------------------------------------


def _key(name: str, role: str, tenant: str | None = None) -> dict[str, str]:
    from app.services import keys

    return {"Authorization": f"Bearer {keys.create_key(name, role, tenant)[1]}"}


def test_another_tenant_gets_404_on_every_mass_action_route(client):
    a, b = _key("a", "operator", "tenant-a"), _key("b", "operator", "tenant-b")
    swarm = create_swarm(client, 3, headers=a)
    mass_action_id = start(client, swarm["id"], headers=a)["mass_action_id"]

    for method, path, headers in (
        ("GET", f"/mass-actions/{mass_action_id}", {}),
        ("GET", f"/mass-actions/{mass_action_id}/results", {}),
        ("GET", f"/mass-actions/{mass_action_id}/results", NDJSON),
        ("DELETE", f"/mass-actions/{mass_action_id}", {}),
        ("POST", f"/mass-actions/{mass_action_id}/cancel", {}),
        ("GET", f"/swarms/{swarm['id']}/mass-actions", {}),
    ):
        response = client.open(path, method=method, headers={**b, **headers})
        assert response.status_code == 404, (method, path)
        assert response.get_json()["error"]["code"] == "not_found"

    view = client.get(f"/mass-actions/{mass_action_id}", headers=a).get_json()
    assert view["counts"]["assigned"] == 3 and view["cancel_requested_at"] is None
    assert len(client.get(f"/swarms/{swarm['id']}/mass-actions", headers=a).get_json()["items"])


def test_viewers_read_operators_cancel_and_every_action_is_audited(client):
    viewer, operator = _key("v", "viewer"), _key("o", "operator")
    swarm = create_swarm(client, 2, headers=operator)
    mass_action_id = start(client, swarm["id"], headers=operator)["mass_action_id"]

    assert client.get(f"/mass-actions/{mass_action_id}", headers=viewer).status_code == 200
    assert client.get(f"/mass-actions/{mass_action_id}/results", headers=viewer).status_code == 200
    assert client.get(f"/swarms/{swarm['id']}/mass-actions", headers=viewer).status_code == 200
    for method, path in (
        ("DELETE", f"/mass-actions/{mass_action_id}"),
        ("POST", f"/mass-actions/{mass_action_id}/cancel"),
        ("POST", f"/swarms/{swarm['id']}/tasks"),
    ):
        response = client.open(path, method=method, headers=viewer, json={"type": "echo"})
        assert response.status_code == 403, (method, path)
    assert client.delete(f"/mass-actions/{mass_action_id}", headers=operator).status_code == 200
    assert (
        client.post(f"/mass-actions/{mass_action_id}/cancel", headers=operator).status_code == 200
    )

    entries = client.get("/audit").get_json()["items"]
    actions = [(e["action"], e["method"], e["path"], e["key_name"]) for e in entries]
    assert actions[:3] == [
        (
            "mass_actions.cancel_mass_action_by_post",
            "POST",
            f"/mass-actions/{mass_action_id}/cancel",
            "o",
        ),
        ("mass_actions.cancel_mass_action", "DELETE", f"/mass-actions/{mass_action_id}", "o"),
        ("swarms.assign_to_swarm", "POST", f"/swarms/{swarm['id']}/tasks", "o"),
    ]


# ---- merge rules (no database) -----------------------------------------------------------------


def _calls(seed: int, n: int) -> list:
    import random

    from app.services.aggregates import Finished

    rng = random.Random(seed)
    tasks = []
    for _ in range(n):
        ms = rng.lognormvariate(4, 1.2)  # around 55 ms, with a long tail
        if rng.random() < 0.1:
            reason = rng.choice(["service answered 503", "timed out after 10 s"])
            tasks.append(
                Finished("image_generation", "failed", None, f"image_generation: {reason}", ms)
            )
        else:
            tasks.append(Finished("image_generation", "completed", {"url": "x"}, None, ms))
    return tasks


def test_ai_rule_merges_split_runs_into_the_single_pass_answer():
    import random

    from app.services import aggregates

    tasks = _calls(7, 5000)
    single = aggregates.merge("image_generation", [aggregates.fold("image_generation", tasks)])
    rng = random.Random(3)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(tasks)), 40))
        pieces = [tasks[a:b] for a, b in zip([0, *cuts], [*cuts, len(tasks)], strict=True)]
        partials = [aggregates.fold("image_generation", piece) for piece in pieces]
        rng.shuffle(partials)
        # Partials of partials too: combining is associative.
        middle = len(partials) // 2
        halves = [
            aggregates.combine("image_generation", partials[:middle]),
            aggregates.combine("image_generation", partials[middle:]),
        ]
        split = aggregates.merge("image_generation", halves)
        assert split["tasks"] == single["tasks"]
        assert split["failures_by_reason"] == single["failures_by_reason"]
        for key in ("count", "min", "max", "p50", "p90", "p99", "percentiles"):
            assert split["latency_ms"][key] == single["latency_ms"][key], key
        assert split["latency_ms"]["mean"] == pytest.approx(single["latency_ms"]["mean"])


def test_ai_rule_counts_failures_by_reason_and_bounds_its_percentiles():
    import math

    from app.services import aggregates

    tasks = _calls(11, 4000)
    answer = aggregates.merge("image_generation", [aggregates.fold("image_generation", tasks)])

    failed = [t for t in tasks if t.state == "failed"]
    assert answer["tasks"] == {"completed": len(tasks) - len(failed), "failed": len(failed)}
    assert answer["failures_by_reason"] == {
        reason: sum(1 for t in failed if t.error.endswith(reason))
        for reason in ("service answered 503", "timed out after 10 s")
    }
    latency = sorted(t.duration_ms for t in tasks)
    figures = answer["latency_ms"]
    assert figures["count"] == len(tasks)
    assert figures["min"] == round(latency[0], 3) and figures["max"] == round(latency[-1], 3)
    assert figures["mean"] == pytest.approx(sum(latency) / len(latency), abs=0.001)
    for q in (50, 90, 99):
        exact = latency[math.ceil(q / 100 * len(latency)) - 1]
        assert abs(figures[f"p{q}"] / exact - 1) <= 2 ** (1 / 16) - 1 + 1e-9, q
    assert "approximate" in figures["percentiles"]


def test_the_counting_rule_answers_for_types_without_a_rule_of_their_own():
    from app.services import aggregates
    from app.services.aggregates import Finished

    tasks = [Finished("echo", "completed", {"n": 1}, None)] * 3 + [
        Finished("echo", "failed", None, "echo: boom"),
        Finished("echo", "cancelled", None, None),
    ]
    assert aggregates.merge(
        "echo", [aggregates.fold("echo", tasks[:2]), aggregates.fold("echo", tasks[2:])]
    ) == {
        "tasks": {"completed": 3, "failed": 1, "cancelled": 1},
        "failures_by_reason": {"boom": 1},
    }
    assert aggregates.merge("image_generation", [])["latency_ms"] is None


# ---- end to end, through a real worker ---------------------------------------------------------

SPEC_SWARM = {
    "name": "processing-swarm",
    "count": 5000,
    "tier": "L20",
    "capabilities": ["data_processing", "analytics", "ml_inference"],
}
SPEC_ASSIGN = {
    "type": "distributed_analysis",
    "data": {"dataset": "large_dataset.csv", "analysis_type": "sentiment", "chunk_size": 1000},
}
SPEC_DISTRIBUTE = {
    "type": "mass_data_processing",
    "data": {
        "dataset": "customer_data_2024.csv",
        "operations": ["clean", "enrich", "analyze"],
        "output_format": "json",
    },
}


def counts_from_rows(mass_action_id: str) -> dict[str, int]:
    """The oracle: the mass-action's task rows counted per state (what the API never does)."""
    rows = db.session.execute(
        text("SELECT status, count(*) FROM tasks WHERE mass_action_id = :id GROUP BY status"),
        {"id": mass_action_id},
    ).all()
    db.session.commit()
    found = dict.fromkeys(("assigned", "running", "completed", "failed", "cancelled"), 0)
    found.update({status: int(n) for status, n in rows})
    found["total"] = sum(found.values())
    return found


@pytest.mark.slow  # a worker
def test_the_spec_mass_action_examples_followed_by_their_ids_to_completion(client, worker):
    swarm = client.post("/swarms", json=SPEC_SWARM).get_json()
    analysis = client.post(f"/swarms/{swarm['id']}/tasks", json=SPEC_ASSIGN)
    small = create_swarm(client, 40, "advanced")
    distributed = client.post(f"/swarms/{small['id']}/tasks", json=SPEC_DISTRIBUTE)
    assert analysis.status_code == distributed.status_code == 202

    for response, total, task_type in (
        (analysis, 5000, "distributed_analysis"),
        (distributed, 40, "mass_data_processing"),
    ):
        body = response.get_json()
        assert body["assignments"] == total
        view = ended(client, body["mass_action_id"], timeout=120)
        assert view["status"] == "completed"
        assert view["counts"] == {
            "total": total,
            "assigned": 0,
            "running": 0,
            "completed": total,
            "failed": 0,
            "cancelled": 0,
        }
        assert view["counts"] == counts_from_rows(body["mass_action_id"])
        assert view["percent"] == 100.0 and view["eta_seconds"] == 0.0
        assert ISO.match(view["started_at"]) and ISO.match(view["finished_at"])
        assert view["tasks_per_second"] > 0
        assert view["aggregate"]["tasks"]["completed"] == total
        stream = client.get(f"/mass-actions/{body['mass_action_id']}/results", headers=NDJSON)
        lines = stream.get_data(as_text=True).splitlines()
        assert len(lines) == total
        assert {json.loads(line)["status"] for line in lines} == {"completed"}
        assert view["task_type"] == task_type


@pytest.mark.slow  # a worker
def test_progress_counts_move_with_the_work_and_stay_exact(client, test_env, sleep_type):
    swarm = create_swarm(client, 3000)
    mass_action_id = start(client, swarm["id"], "sleep", {"seconds": 0.002})["mass_action_id"]
    seen_running = False
    worker = WorkerProcess(test_env, extra_env=sleep_type)
    worker.start()
    try:
        while True:
            view = progress(client, mass_action_id)
            counts = view["counts"]
            assert (
                sum(counts[s] for s in ("assigned", "running", "completed", "failed", "cancelled"))
                == 3000
            )
            seen_running = seen_running or counts["running"] > 0
            if view["finished_at"]:
                break
        assert seen_running
    finally:
        worker.stop()
    assert view["counts"] == counts_from_rows(mass_action_id)
    assert view["counts"]["completed"] == 3000


@pytest.mark.slow  # a worker
def test_cancel_in_the_middle_of_a_large_mass_action(client, test_env, sleep_type):
    swarm = create_swarm(client, 20_000)
    mass_action_id = start(client, swarm["id"], "sleep", {"seconds": 0.001})["mass_action_id"]
    worker = WorkerProcess(test_env, extra_env=sleep_type)
    worker.start()
    try:
        wait_for(lambda: progress(client, mass_action_id)["counts"]["completed"] >= 500)
        response = client.delete(f"/mass-actions/{mass_action_id}")
        assert response.status_code == 200
        cancelled = response.get_json()
        assert cancelled["cancel_requested_at"] is not None
        assert cancelled["counts"]["cancelled"] > 10_000
        assert cancelled["counts"]["assigned"] == 0  # not one task left waiting
        view = ended(client, mass_action_id)
    finally:
        worker.stop()

    assert view["status"] == "cancelled"
    counts = view["counts"]
    assert counts == counts_from_rows(mass_action_id)
    assert counts["running"] == 0 and counts["completed"] >= 500
    assert counts["completed"] + counts["cancelled"] == 20_000
    # Running tasks finished; no cancelled task ever started.
    started = db.session.execute(
        text(
            "SELECT count(*) FROM tasks WHERE mass_action_id = :id AND status = 'cancelled'"
            " AND (started_at IS NOT NULL OR attempts > 0)"
        ),
        {"id": mass_action_id},
    ).scalar_one()
    assert started == 0
    # The counters and the aggregate say so; so do the swarm's and the service's.
    assert view["aggregate"]["tasks"] == {
        "completed": counts["completed"],
        "cancelled": counts["cancelled"],
    }
    swarm_view = client.get(f"/swarms/{swarm['id']}").get_json()
    assert swarm_view["total_tasks_completed"] == counts["completed"]
    # Repeating the cancel changes nothing.
    again = client.post(f"/mass-actions/{mass_action_id}/cancel").get_json()
    assert again["counts"] == counts and again["cancel_requested_at"] == view["cancel_requested_at"]


@pytest.mark.slow  # a worker
def test_an_ended_mass_action_cannot_be_cancelled(client, worker):
    swarm = create_swarm(client, 10)
    mass_action_id = start(client, swarm["id"])["mass_action_id"]
    ended(client, mass_action_id)

    response = client.delete(f"/mass-actions/{mass_action_id}")

    assert response.status_code == 409
    error = response.get_json()["error"]
    assert (error["code"], error["mass_action_status"]) == ("conflict", "completed")
    assert progress(client, mass_action_id)["status"] == "completed"


@pytest.mark.slow  # a worker
def test_ai_mass_action_aggregates_counts_failures_and_latency(client, test_env, fake_service):
    service = fake_service(
        responses=[(400, {"error": "no such prompt"})] * 3,
        default=(200, {"image_url": "https://img.example/sunset.png"}),
    )
    assert client.put("/services/image", json={"urls": [service.url]}).status_code == 200
    swarm = client.post(
        "/swarms", json={"name": "ai", "count": 30, "tier": "L20", "capabilities": ["ml_inference"]}
    ).get_json()
    mass_action_id = start(client, swarm["id"], "image_generation", {"prompt": "sunset"})[
        "mass_action_id"
    ]
    worker = WorkerProcess(test_env)
    worker.start()
    try:
        view = ended(client, mass_action_id)
    finally:
        worker.stop()

    aggregate = view["aggregate"]
    counts = view["counts"]
    assert counts == counts_from_rows(mass_action_id)
    assert aggregate["tasks"] == {
        k: v for k, v in counts.items() if k in ("completed", "failed") and v
    }
    assert sum(aggregate["failures_by_reason"].values()) == counts["failed"]
    latency = aggregate["latency_ms"]
    assert latency["count"] == counts["completed"] + counts["failed"] == 30
    assert 0 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]
    assert "approximate" in latency["percentiles"]


# ---- in process: partials and the end of a mass-action -----------------------------------------


def _task_ids(mass_action_id: str) -> list[int]:
    ids = [
        row[0]
        for row in db.session.execute(
            text("SELECT id FROM tasks WHERE mass_action_id = :id ORDER BY id"),
            {"id": mass_action_id},
        )
    ]
    db.session.commit()
    return ids


def _partial_rows(mass_action_id: str) -> int:
    n = db.session.execute(
        text("SELECT count(*) FROM mass_action_partials WHERE mass_action_id = :id"),
        {"id": mass_action_id},
    ).scalar_one()
    db.session.commit()
    return int(n)


def test_partials_are_written_per_chunk_and_compacted_on_read(client):
    swarm = create_swarm(client, 100)
    mass_action_id = start(client, swarm["id"])["mass_action_id"]
    ids = _task_ids(mass_action_id)
    for i in range(0, 100, 2):
        execution.run_chunk(ids[i : i + 2])
    execution.run_chunk(ids[:10])  # a duplicate delivery folds nothing twice
    assert _partial_rows(mass_action_id) == 50 > partials.COMPACT_AT

    first = progress(client, mass_action_id)

    assert first["aggregate"] == {"tasks": {"completed": 100}, "failures_by_reason": {}}
    assert _partial_rows(mass_action_id) == 1
    assert progress(client, mass_action_id)["aggregate"] == first["aggregate"]


def test_a_polled_aggregate_is_merged_again_only_when_its_partials_moved(client, monkeypatch):
    swarm = create_swarm(client, 6)
    mass_action_id = start(client, swarm["id"])["mass_action_id"]
    ids = _task_ids(mass_action_id)
    execution.run_chunk(ids[:2])
    merges: list[str] = []
    combine = aggregates.combine

    def counted_combine(task_type, rows):
        merges.append(task_type)
        return combine(task_type, rows)

    monkeypatch.setattr(aggregates, "combine", counted_combine)

    polled = [progress(client, mass_action_id)["aggregate"] for _ in range(3)]
    assert merges == ["echo"]
    assert all(one == {"tasks": {"completed": 2}, "failures_by_reason": {}} for one in polled)

    execution.run_chunk(ids[2:5])
    assert progress(client, mass_action_id)["aggregate"]["tasks"] == {"completed": 5}
    assert merges == ["echo", "echo"]


def test_the_partial_folded_before_the_record_counts_only_when_the_same_tasks_moved(
    client, monkeypatch
):
    from app.services import workflows
    from app.services.aggregates import Finished
    from app.services.outcomes import Outcome, record_outcomes

    folded: list[int] = []
    fold = aggregates.fold

    def counted_fold(task_type: str, tasks: list) -> dict:
        folded.append(len(tasks))
        return fold(task_type, tasks)

    monkeypatch.setattr(aggregates, "fold", counted_fold)
    swarm = create_swarm(client, 6)
    mass_action_id = start(client, swarm["id"])["mass_action_id"]
    ids = _task_ids(mass_action_id)

    execution.run_chunk(ids[:2])
    assert folded == [2]  # folded once, before the record statement took its locks

    # Four outcomes recorded at once, two of whose tasks another delivery has ended meanwhile.
    outcomes = [Outcome(task_id, "completed", {}, None, None) for task_id in ids[:4]]
    ahead = aggregates.fold_ahead(
        (o.task_id, Finished("echo", o.state, {}, None)) for o in outcomes
    )
    moved = record_outcomes(
        outcomes,
        ("assigned",),
        on_workflows=workflows.on_steps_moved,
        unclaimed_since=datetime.datetime.now(datetime.UTC),
        folded_ahead=ahead,
    )
    assert moved == 2
    assert folded == [2, 4, 2]  # the four folded ahead do not count; the two that moved do
    assert progress(client, mass_action_id)["aggregate"]["tasks"] == {"completed": 4}


def test_a_listener_hears_each_end_once_after_its_commit(client):
    heard: list = []
    listener = mass_action_events.on_mass_action_finished(heard.append)
    try:
        swarm = create_swarm(client, 5)
        completed_id = start(client, swarm["id"])["mass_action_id"]
        ids = _task_ids(completed_id)
        execution.run_chunk(ids[:3])
        assert heard == []
        execution.run_chunk(ids)
        execution.run_chunk(ids)  # delivered again: ends nothing twice
        [done] = heard
        assert (done.id, done.status, done.total, done.completed) == (
            completed_id,
            "completed",
            5,
            5,
        )
        assert done.task_type == "echo" and done.tier == "standard"
        assert done.duration_seconds >= 0

        cancelled_id = start(client, swarm["id"])["mass_action_id"]
        assert client.delete(f"/mass-actions/{cancelled_id}").status_code == 200
        assert client.delete(f"/mass-actions/{cancelled_id}").status_code == 200
        assert [(f.id, f.status, f.cancelled) for f in heard[1:]] == [
            (cancelled_id, "cancelled", 5)
        ]

        for bot_id in swarm["bot_ids"]:
            client.patch(f"/bots/{bot_id}", json={"status": "paused"})
        empty_id = start(client, swarm["id"])["mass_action_id"]
        assert [(f.id, f.status, f.total) for f in heard[2:]] == [(empty_id, "completed", 0)]
    finally:
        mass_action_events.remove_listener(listener)


def test_a_failing_listener_changes_nothing(client, caplog):
    def broken(_finished) -> None:
        raise RuntimeError("listener bug")

    mass_action_events.on_mass_action_finished(broken)
    try:
        swarm = create_swarm(client, 3)
        mass_action_id = start(client, swarm["id"])["mass_action_id"]
        execution.run_chunk(_task_ids(mass_action_id))
    finally:
        mass_action_events.remove_listener(broken)
    assert progress(client, mass_action_id)["status"] == "completed"
    assert "listener bug" in caplog.text


def test_counters_follow_claim_requeue_manual_completion_and_cancel_exactly(client):
    from app.services import reconciler

    swarm = create_swarm(client, 10)
    mass_action_id = start(client, swarm["id"])["mass_action_id"]
    ids = _task_ids(mass_action_id)

    def counts() -> dict:
        view = progress(client, mass_action_id)
        assert view["counts"] == counts_from_rows(mass_action_id)
        return view["counts"]

    claimed = execution.claim(ids[:4])
    assert len(claimed) == 4
    assert counts()["running"] == 4 and counts()["assigned"] == 6
    assert progress(client, mass_action_id)["status"] == "running"

    # Two leases expire: the reconciler hands them back (running -> assigned).
    db.session.execute(
        text(
            "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = ANY(:ids)"
        ),
        {"ids": ids[:2]},
    )
    db.session.commit()
    assert reconciler.reconcile().requeued == 2
    assert (counts()["running"], counts()["assigned"]) == (2, 8)

    # By hand: one running task and one never started.
    bots = dict(
        db.session.execute(
            text("SELECT id, bot_id FROM tasks WHERE id = ANY(:ids)"), {"ids": ids}
        ).all()
    )
    db.session.commit()
    for task_id in (ids[2], ids[5]):
        done = client.post(f"/bots/{bots[task_id]}/tasks/task-{task_id}/complete", json={})
        assert done.status_code == 200
    assert counts() == {
        "total": 10,
        "assigned": 7,
        "running": 1,
        "completed": 2,
        "failed": 0,
        "cancelled": 0,
    }

    cancelled = client.post(f"/mass-actions/{mass_action_id}/cancel").get_json()
    assert cancelled["counts"]["cancelled"] == 7 and cancelled["status"] == "running"
    assert cancelled["finished_at"] is None  # one task still runs
    done = client.post(f"/bots/{bots[ids[3]]}/tasks/task-{ids[3]}/complete", json={})
    assert done.status_code == 200
    view = progress(client, mass_action_id)
    assert view["counts"] == counts_from_rows(mass_action_id)
    assert (view["status"], view["counts"]["completed"], view["counts"]["cancelled"]) == (
        "cancelled",
        3,
        7,
    )
    assert view["finished_at"] is not None and view["percent"] == 100.0
    assert view["aggregate"]["tasks"] == {"completed": 3, "cancelled": 7}


def test_result_pages_skip_other_tasks_in_the_id_range_and_find_sparse_statuses(client):
    swarm = create_swarm(client, 30)
    mass_action_id = start(client, swarm["id"])["mass_action_id"]
    ids = _task_ids(mass_action_id)
    # As if another INSERT had taken ids in the middle of this one's range.
    db.session.execute(
        text("UPDATE tasks SET mass_action_id = 'ma-someone-else' WHERE id = ANY(:ids)"),
        {"ids": ids[10:13]},
    )
    db.session.execute(
        text("UPDATE tasks SET status = 'failed' WHERE id = ANY(:ids)"),
        {"ids": [ids[4], ids[26]]},
    )
    db.session.commit()
    mine = [f"task-{i}" for i in ids[:10] + ids[13:]]

    def every_page(query: str) -> list[str]:
        seen, after = [], None
        while True:
            page = client.get(
                f"/mass-actions/{mass_action_id}/results?{query}"
                + (f"&after={after}" if after else "")
            ).get_json()
            seen += [item["task_id"] for item in page["items"]]
            after = page["next_after"]
            if after is None:
                return seen

    assert every_page("limit=4") == mine
    assert every_page("limit=1&status=failed") == [f"task-{ids[4]}", f"task-{ids[26]}"]
    assert every_page("limit=1000&status=running") == []
    streamed = client.get(f"/mass-actions/{mass_action_id}/results", headers=NDJSON)
    assert [
        json.loads(line)["task_id"] for line in streamed.get_data(as_text=True).splitlines()
    ] == mine

"""Tasks through the API: assignment, status, manual completion, listing, and real execution."""

from __future__ import annotations

import csv
import random
import re
import threading

import pytest
from sqlalchemy import text
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from app.extensions import db
from app.services import assignments
from app.services.ids import parse_task_id
from tests.workers import WorkerProcess, queue_lengths, wait_for

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
CAPABILITIES = ["data_processing", "analytics", "reporting"]


def create_bot(client, tier: str = "standard", capabilities=CAPABILITIES) -> dict:
    response = client.post("/bots", json={"name": "b", "tier": tier, "capabilities": capabilities})
    assert response.status_code == 201
    return response.get_json()


def create_swarm(client, count: int, tier: str = "standard", capabilities=CAPABILITIES) -> dict:
    response = client.post(
        "/swarms", json={"name": "s", "count": count, "tier": tier, "capabilities": capabilities}
    )
    assert response.status_code == 201
    return response.get_json()


def assign(client, bot_id: str, type_name: str = "echo", data=None) -> dict:
    response = client.post(f"/bots/{bot_id}/tasks", json={"type": type_name, "data": data or {}})
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()


# ---- assignment and status -------------------------------------------------------------------


def test_assign_task_to_bot_returns_202_and_publishes_it_to_the_tier_queue(client, test_env):
    bot = create_bot(client, "advanced")

    body = assign(client, bot["id"], "data_processing", {"input_file": "data.csv"})

    assert set(body) == {"task_id", "bot_id", "task_type", "status", "assigned_at"}
    assert re.fullmatch(r"task-\d+", body["task_id"])
    assert body["bot_id"] == bot["id"]
    assert body["task_type"] == "data_processing"
    assert body["status"] == "assigned"
    assert ISO.match(body["assigned_at"])
    assert {q: n for q, n in queue_lengths(test_env["REDIS_URL"]).items() if n} == {"advanced": 1}
    after = client.get(f"/bots/{bot['id']}").get_json()
    assert (after["total_tasks"], after["pending_tasks"], after["tasks_completed"]) == (1, 1, 0)
    assert client.get("/bots/stats").get_json()["tasks_assigned"] == 1


def test_get_task_shows_its_type_bot_status_and_data(client):
    bot = create_bot(client, "L20")
    data = {"input_file": "data.csv", "operations": ["clean"], "nested": {"k": [1, 2]}}
    task_id = assign(client, bot["id"], "data_processing", data)["task_id"]

    response = client.get(f"/task/{task_id}")

    assert response.status_code == 200
    body = response.get_json()
    assert body["task_id"] == task_id
    assert body["task_type"] == "data_processing"
    assert body["status"] == "assigned"
    assert body["bot_id"] == bot["id"]
    assert body["tier"] == "L20"
    assert body["data"] == data
    assert body["result"] is None
    assert body["attempts"] == 0
    assert ISO.match(body["assigned_at"])


# ---- completion ------------------------------------------------------------------------------


def test_completing_a_task_twice_answers_the_same_and_counts_once(client):
    bot = create_bot(client)
    tasks = [assign(client, bot["id"])["task_id"] for _ in range(3)]
    url = f"/bots/{bot['id']}/tasks/{tasks[1]}/complete"

    first = client.post(url)
    second = client.post(url)

    assert first.status_code == second.status_code == 200
    assert first.get_json() == second.get_json()
    body = first.get_json()
    assert (body["task_id"], body["status"], body["bot_id"]) == (tasks[1], "completed", bot["id"])
    assert ISO.match(body["finished_at"])
    after = client.get(f"/bots/{bot['id']}").get_json()
    assert after["tasks_completed"] == after["completed_tasks"] == 1
    assert (after["total_tasks"], after["pending_tasks"]) == (3, 2)
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 1
    assert client.get(f"/task/{tasks[1]}").get_json()["status"] == "completed"
    assert client.get(f"/task/{tasks[0]}").get_json()["status"] == "assigned"


def test_completing_with_a_result_stores_it(client):
    bot = create_bot(client)
    task_id = assign(client, bot["id"])["task_id"]

    body = client.post(
        f"/bots/{bot['id']}/tasks/{task_id}/complete", json={"result": {"rows": 7}}
    ).get_json()

    assert body["result"] == {"rows": 7}
    assert client.get(f"/task/{task_id}").get_json()["result"] == {"rows": 7}


def test_completing_a_swarm_bots_task_counts_on_the_swarm(client):
    swarm = create_swarm(client, 4)
    client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"})
    bot_id = swarm["bot_ids"][2]
    (task,) = client.get(f"/bots/{bot_id}/tasks").get_json()["items"]

    client.post(f"/bots/{bot_id}/tasks/{task['task_id']}/complete")
    client.post(f"/bots/{bot_id}/tasks/{task['task_id']}/complete")

    view = client.get(f"/swarms/{swarm['id']}").get_json()
    assert view["total_tasks_completed"] == 1
    assert view["total_tasks_assigned"] == 4
    assert view["average_tasks_per_bot"] == 0.25


def test_completing_another_bots_task_returns_404_and_counts_nothing(client):
    owner, other = create_bot(client), create_bot(client)
    task_id = assign(client, owner["id"])["task_id"]

    response = client.post(f"/bots/{other['id']}/tasks/{task_id}/complete")

    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/task/{task_id}").get_json()["status"] == "assigned"
    assert client.get(f"/bots/{other['id']}").get_json()["tasks_completed"] == 0
    assert client.get(f"/bots/{owner['id']}").get_json()["tasks_completed"] == 0
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 0


@pytest.mark.parametrize("task_id", ["task-999999", "task-x", "999", "task-"])
def test_completing_an_unknown_task_returns_404(client, task_id):
    bot = create_bot(client)

    response = client.post(f"/bots/{bot['id']}/tasks/{task_id}/complete")

    assert response.status_code == 404
    assert response.get_json()["error"]["status"] == 404


def test_completing_a_cancelled_task_returns_409(client):
    bot = create_bot(client)
    task_id = assign(client, bot["id"])["task_id"]
    client.delete(f"/bots/{bot['id']}")

    response = client.post(f"/bots/{bot['id']}/tasks/{task_id}/complete")

    assert response.status_code == 409
    error = response.get_json()["error"]
    assert (error["status"], error["task_status"]) == (409, "cancelled")
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 0


# ---- listing a bot's tasks -------------------------------------------------------------------


def test_list_bot_tasks_pages_newest_first_and_filters_by_status(client):
    bot = create_bot(client)
    other = create_bot(client)
    ids = [assign(client, bot["id"])["task_id"] for _ in range(7)]
    assign(client, other["id"])
    for task_id in ids[:3]:
        client.post(f"/bots/{bot['id']}/tasks/{task_id}/complete")

    first = client.get(f"/bots/{bot['id']}/tasks?limit=3").get_json()
    second = client.get(f"/bots/{bot['id']}/tasks?limit=3&after={first['next_after']}").get_json()
    third = client.get(f"/bots/{bot['id']}/tasks?limit=3&after={second['next_after']}").get_json()

    listed = [task["task_id"] for page in (first, second, third) for task in page["items"]]
    assert listed == list(reversed(ids))
    assert first["next_after"] == ids[4]
    assert third["next_after"] is None
    done = client.get(f"/bots/{bot['id']}/tasks?status=completed").get_json()
    assert [task["task_id"] for task in done["items"]] == list(reversed(ids[:3]))
    waiting = client.get(f"/bots/{bot['id']}/tasks?status=assigned&limit=2").get_json()
    assert [task["task_id"] for task in waiting["items"]] == [ids[6], ids[5]]
    assert client.get(f"/bots/{bot['id']}/tasks?after=bogus").status_code == 404


# ---- concurrency -----------------------------------------------------------------------------


def test_eight_threads_completing_the_same_200_tasks_count_each_once(app, client):
    swarm = create_swarm(client, 200)
    assert client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"}).status_code == 202
    pairs = [
        (bot_id, task_id)
        for bot_id, task_id in db.session.execute(
            text("SELECT bot_id, id FROM tasks WHERE swarm_id = :s"), {"s": swarm["id"]}
        ).all()
    ]
    db.session.commit()
    assert len(pairs) == 200
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def complete_all(seed: int) -> None:
        order = pairs[:]
        random.Random(seed).shuffle(order)
        try:
            with app.app_context():
                start.wait()
                for bot_id, task_id in order:
                    task = assignments.complete_task(bot_id, task_id, {"by": seed})
                    assert task.status == "completed"
                db.session.remove()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=complete_all, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 200
    assert client.get(f"/swarms/{swarm['id']}").get_json()["total_tasks_completed"] == 200
    per_bot = db.session.execute(
        text("SELECT min(completed_tasks), max(completed_tasks), sum(completed_tasks) FROM bots")
    ).one()
    assert tuple(per_bot) == (1, 1, 200)
    statuses = db.session.execute(text("SELECT status, count(*) FROM tasks GROUP BY 1")).all()
    assert statuses == [("completed", 200)]


def test_concurrent_http_completions_of_one_task_count_once(app):
    client = app.test_client()
    bot = create_bot(client)
    task_id = assign(client, bot["id"])["task_id"]
    start = threading.Barrier(8)
    statuses: list[int] = []

    def complete() -> None:
        own = app.test_client()
        start.wait()
        statuses.append(own.post(f"/bots/{bot['id']}/tasks/{task_id}/complete").status_code)

    threads = [threading.Thread(target=complete) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert statuses == [200] * 8
    assert client.get(f"/bots/{bot['id']}").get_json()["tasks_completed"] == 1
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 1


# ---- real execution on a worker --------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_worker(migrated_app, test_env):
    """One real worker for this module's execution tests."""
    process = WorkerProcess(test_env)
    process.start()
    yield process
    process.stop()


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def wait_for_task(client, task_id: str, timeout: float = 30.0) -> dict:
    def finished():
        body = client.get(f"/task/{task_id}").get_json()
        return body if body["status"] in ("completed", "failed") else None

    return wait_for(finished, timeout)


@pytest.mark.slow
def test_data_processing_on_data_csv_runs_on_a_worker_with_real_figures(
    client, sample_data_dir, shared_worker
):
    rows = read_csv(sample_data_dir / "data.csv")
    # Independent oracle for `clean`: strip, drop all-blank rows, drop exact duplicates.
    seen, cleaned = set(), []
    for row in rows:
        stripped = tuple((k.strip(), (v or "").strip()) for k, v in row.items())
        if all(not v for _, v in stripped) or stripped in seen:
            continue
        seen.add(stripped)
        cleaned.append(dict(stripped))
    spends = [float(row["Monthly Spend"]) for row in cleaned if row["Monthly Spend"]]
    bot = create_bot(client, "L20")

    task_id = assign(
        client,
        bot["id"],
        "data_processing",
        {"input_file": "data.csv", "operations": ["clean", "transform", "analyze"]},
    )["task_id"]
    body = wait_for_task(client, task_id)

    assert body["status"] == "completed", body["error"]
    result = body["result"]
    assert result["rows_in"] == len(rows)
    assert result["rows_out"] == len(cleaned) < len(rows)
    columns = result["columns"]
    assert set(columns) == {"customer_id", "name", "region", "plan", "monthly_spend", "seats"}
    assert columns["monthly_spend"]["count"] == len(cleaned)
    assert columns["monthly_spend"]["min"] == min(spends)
    assert columns["monthly_spend"]["max"] == max(spends)
    assert columns["region"]["distinct"] == len({row["Region"] for row in cleaned})
    assert result["records"][0]["name"] == cleaned[0]["Name"]
    assert body["attempts"] == 1
    bot_after = client.get(f"/bots/{bot['id']}").get_json()
    assert (bot_after["tasks_completed"], bot_after["pending_tasks"]) == (1, 0)
    assert client.get("/bots/stats").get_json()["tasks_executed"] == 1


@pytest.mark.slow
def test_distributed_sentiment_slices_add_up_to_the_whole_dataset(
    client, sample_data_dir, shared_worker
):
    rows = read_csv(sample_data_dir / "large_dataset.csv")
    analyzer = SentimentIntensityAnalyzer()
    compounds = [analyzer.polarity_scores(row["text"])["compound"] for row in rows]
    expected = {
        "positive": sum(c >= 0.05 for c in compounds),
        "negative": sum(c <= -0.05 for c in compounds),
    }
    expected["neutral"] = len(rows) - expected["positive"] - expected["negative"]
    chunk = 700
    bots_needed = -(-len(rows) // chunk)
    swarm = create_swarm(client, bots_needed + 2, "advanced")

    response = client.post(
        f"/swarms/{swarm['id']}/tasks",
        json={
            "type": "distributed_analysis",
            "data": {
                "dataset": "large_dataset.csv",
                "analysis_type": "sentiment",
                "chunk_size": chunk,
            },
        },
    )
    assert response.get_json()["assignments"] == bots_needed + 2

    def done():
        view = client.get(f"/swarms/{swarm['id']}").get_json()
        return view["total_tasks_completed"] == bots_needed + 2

    wait_for(done)
    results = [
        row[0]
        for row in db.session.execute(
            text("SELECT result FROM tasks WHERE swarm_id = :s ORDER BY slice_index"),
            {"s": swarm["id"]},
        )
    ]
    assert sum(r["rows"] for r in results) == len(rows)
    assert [r["slice"] for r in results[:2]] == [[0, chunk], [chunk, 2 * chunk]]
    assert results[-1]["rows"] == 0  # more bots than chunks: the spare ones get empty slices
    for key in ("positive", "negative", "neutral"):
        assert sum(r[key] for r in results) == expected[key], key
    assert expected["positive"] > 0 and expected["negative"] > 0


@pytest.mark.slow
def test_mass_data_processing_of_customer_data_splits_the_file_over_the_bots(
    client, sample_data_dir, shared_worker
):
    rows = read_csv(sample_data_dir / "customer_data_2024.csv")
    swarm = create_swarm(client, 6, "L20")

    response = client.post(
        f"/swarms/{swarm['id']}/tasks",
        json={
            "type": "mass_data_processing",
            "data": {
                "dataset": "customer_data_2024.csv",
                "operations": ["clean", "enrich", "analyze"],
                "output_format": "json",
            },
        },
    )
    assert response.get_json()["assignments"] == 6

    wait_for(lambda: client.get(f"/swarms/{swarm['id']}").get_json()["total_tasks_completed"] == 6)
    results = [
        row[0]
        for row in db.session.execute(
            text("SELECT result FROM tasks WHERE swarm_id = :s ORDER BY slice_index"),
            {"s": swarm["id"]},
        )
    ]
    # 1,000 rows over 6 bots: four parts of 167 rows and two of 166, in order, no overlap.
    assert [r["rows_in"] for r in results] == [167, 167, 167, 167, 166, 166]
    assert [r["slice"] for r in results][:2] == [[0, 167], [167, 334]]
    assert results[0]["records"][0]["_row"] == 1
    assert results[1]["records"] == []  # the first 100 output rows are all in the first part
    ids = [r["columns"]["customer_id"]["distinct"] for r in results]
    assert sum(ids) == len({r["customer_id"] for r in rows})
    assert max(r["columns"]["orders"]["max"] for r in results) == max(
        int(r["orders"]) for r in rows
    )
    stats = client.get("/bots/stats").get_json()
    assert stats["tasks_executed"] == 6


@pytest.mark.slow
def test_a_failing_task_is_recorded_failed_with_its_reason(client, shared_worker):
    bot = create_bot(client)

    task_id = assign(client, bot["id"], "data_processing", {"input_file": "missing.csv"})["task_id"]
    body = wait_for_task(client, task_id)

    assert body["status"] == "failed"
    assert "missing.csv" in body["error"]
    after = client.get(f"/bots/{bot['id']}").get_json()
    assert (after["failed_tasks"], after["tasks_completed"], after["pending_tasks"]) == (1, 0, 0)
    stats = client.get("/bots/stats").get_json()
    assert (stats["tasks_failed"], stats["tasks_executed"]) == (1, 0)
    # A failed task cannot be completed by hand.
    assert parse_task_id(task_id) is not None
    assert client.post(f"/bots/{bot['id']}/tasks/{task_id}/complete").status_code == 409

"""Kill anything at any moment: every task still ends, every counter is still exact.

Each scenario runs on a stack this module owns (tests/faultstack.py: its own PostgreSQL and
redis-server on free ports, real `celery worker` processes with TASK_LEASE_SECONDS=5, the real
reconciler every second), injects one fault, waits for the work to drain and checks the invariants
of tests/invariants.py. bench/chaos.py runs the same scenarios at 50,000 tasks.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from app.extensions import db
from tests import faultstack
from tests.invariants import check_invariants

pytestmark = pytest.mark.faults  # own PostgreSQL and Redis, broken on purpose


@pytest.fixture(scope="module")
def stack(test_env):
    home = Path(tempfile.mkdtemp(prefix="orchestrator-faults-"))
    fault_stack = faultstack.FaultStack(home, record_url=test_env["REDIS_URL"])
    try:
        fault_stack.start()
        yield fault_stack
    finally:
        fault_stack.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture()
def own_stack(stack):
    """The module's stack, with this test's workers stopped afterwards."""
    yield stack
    for worker in stack.workers:
        worker.stop()
    stack.workers.clear()


def _assert_exact(result: faultstack.ScenarioResult) -> None:
    assert result.problems == [], result
    assert (result.lost, result.double_counted, result.beyond_attempts) == (0, 0, 0), result
    assert result.http_500 == 0, result


def test_kill_dash_nine_of_the_whole_worker_mid_run_loses_nothing(own_stack):
    result = faultstack.kill_whole_worker(own_stack, 10_000, seconds=0.0005)
    _assert_exact(result)
    assert result.by_status == {"completed": 10_000}


def test_killing_pool_processes_repeatedly_loses_nothing(own_stack):
    result = faultstack.kill_pool_processes(own_stack, 5_000, kills=3, seconds=0.001)
    _assert_exact(result)
    assert result.by_status == {"completed": 5_000}
    assert result.details["worker_alive"]


def test_flushall_mid_run_loses_nothing(own_stack):
    result = faultstack.flush_redis(own_stack, 5_000, seconds=0.001)
    _assert_exact(result)
    assert result.by_status == {"completed": 5_000}


def test_redis_restarts_mid_run_lose_nothing_and_writes_still_commit(own_stack):
    result = faultstack.restart_redis(own_stack, 5_000, restarts=3, seconds=0.001)
    status, health = result.details["health"]
    assert status == 503 and health["status"] == "degraded" and health["failing"] == ["redis"]
    # A write that needs the broker commits its rows; the reconciler publishes them later.
    assert result.details["assign"][0] == 202, result.details
    assert result.details["assign"][1] < 5, result.details
    assert result.details["worker_alive"], result.details["worker_log"]
    _assert_exact(result)
    assert result.by_status == {"completed": 5_001}


def test_postgres_restart_with_requests_in_flight_answers_503_then_recovers(own_stack):
    result = faultstack.restart_postgres(own_stack, 5_000, down_seconds=3.0, seconds=0.001)
    outage = result.details["outage_calls"]
    assert outage, "no request was made during the outage"
    for call in outage:
        assert call.status == 503 and call.json and call.retry_after, call
        assert call.seconds < 2.0, call
    status, health = result.details["health_during"]
    assert status == 503 and health["status"] == "degraded" and health["failing"] == ["postgres"]
    assert result.details["serving_after"] is not None
    assert result.details["serving_after"] < 10.0
    assert result.details["after_outage_500"] == []
    _assert_exact(result)
    assert result.by_status == {"completed": 5_000}


def test_clients_racing_the_worker_on_complete_count_each_task_once(own_stack):
    result = faultstack.racing_completions(own_stack, 2_000, clients=8)
    assert result.details["statuses"] == [200], result
    _assert_exact(result)
    assert result.by_status == {"completed": 2_000}


def test_concurrent_swarm_creations_never_exceed_max_bots(own_stack):
    result = faultstack.concurrent_swarm_creation(own_stack, creators=10, size=10_000)
    assert sorted(result.details["statuses"]) == [201] * 5 + [409] * 5
    assert result.details["live"] == 50_000
    assert result.details["max_seen"] <= 50_000
    _assert_exact(result)


def test_one_mass_action_sent_five_times_with_one_key_over_http(own_stack):
    result = faultstack.idempotent_mass_action_over_http(own_stack, 1_000, senders=5)
    answers = result.details["answers"]
    assert {status for status, _ in answers} == {202}
    assert len({answer["timestamp"] for _, answer in answers}) == 1
    _assert_exact(result)
    assert result.by_status == {"completed": 1_000}


def test_a_task_that_always_crashes_its_worker_fails_after_the_attempt_limit(own_stack):
    result = faultstack.poison_task(own_stack, 500)
    status, attempts, error = result.details["poison"]
    assert (status, attempts) == ("failed", own_stack.max_attempts)
    assert f"after {own_stack.max_attempts} attempts" in error
    _assert_exact(result)
    assert result.by_status == {"completed": 500, "failed": 1}


def test_kill_dash_nine_of_the_io_pool_mid_fan_out_loses_nothing(own_stack):
    result = faultstack.kill_io_pool(own_stack, 600, limit=16)
    _assert_exact(result)
    assert result.by_status == {"completed": 600}
    # The dead pool's calls ran again within a minute, not after the 300 s task lease.
    assert result.drained_s < 60, result
    # Slots of the dead pool expired instead of being given to more than the limit.
    assert result.details["max_in_flight"] <= 16, result.details


def test_redis_restart_mid_fan_out_loses_nothing(own_stack):
    result = faultstack.restart_redis_during_calls(own_stack, 600, limit=16)
    _assert_exact(result)
    assert result.by_status == {"completed": 600}
    assert result.drained_s < 60, result


def test_the_checker_catches_a_read_then_write_completion(client):
    """Negative control: counters moved by read-then-write lose updates, and the checker says so."""
    swarm = client.post("/swarms", json={"name": "n", "count": 40, "tier": "standard"}).get_json()
    answer = client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo", "data": {}})
    assert answer.status_code == 202
    rows = db.session.execute(text("SELECT id, bot_id, swarm_id FROM tasks ORDER BY id")).all()
    db.session.commit()
    barrier = threading.Barrier(2)
    engine = db.engine

    def broken_complete(pairs) -> None:
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            for task_id, bot_id, swarm_id in pairs:
                connection.execute(
                    text("UPDATE tasks SET status = 'completed' WHERE id = :id"), {"id": task_id}
                )
                for table, key in (("bots", bot_id), ("swarms", swarm_id)):
                    seen = connection.execute(
                        text(f"SELECT completed_tasks FROM {table} WHERE id = :id"), {"id": key}
                    ).scalar_one()
                    barrier.wait()  # both clients read before either writes
                    connection.execute(
                        text(f"UPDATE {table} SET completed_tasks = :v WHERE id = :id"),
                        {"v": seen + 1, "id": key},
                    )
                seen = connection.execute(
                    text(
                        "SELECT coalesce(max(value), 0) FROM counters WHERE name = 'tasks_completed'"
                    )
                ).scalar_one()
                barrier.wait()
                connection.execute(
                    text(
                        "INSERT INTO counters (name, value) VALUES ('tasks_completed', :v)"
                        " ON CONFLICT (name, shard) DO UPDATE SET value = :v"
                    ),
                    {"v": seen + 1},
                )

    threads = [threading.Thread(target=broken_complete, args=(rows[half::2],)) for half in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    problems = check_invariants(db.session)
    assert any("counter tasks_completed 20 != 40 task rows" in p for p in problems), problems
    assert any("sum of swarm counters 20 != 40" in p for p in problems), problems
    # Every task is terminal and the per-bot counts happen to hold: only the lost updates show.
    assert not any("not terminal" in p for p in problems), problems

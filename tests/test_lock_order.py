"""Concurrent assignments, completions and chunk recordings over shared bots: no deadlock.

PostgreSQL counts every deadlock it breaks in pg_stat_database.deadlocks. A backend reports its
statistics when it goes idle (forced with pg_stat_force_next_flush), so the count is read after
every pooled connection has been made to report.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest
from psycopg2.errors import DeadlockDetected
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.errors import Conflict
from app.extensions import db
from app.services import assignments, execution, mass_actions
from tests.invariants import check_invariants

pytestmark = pytest.mark.usefixtures("app")

BOTS = 60
ROUNDS = 4
CHUNK = 15
SINGLES_PER_THREAD = 60


def deadlocks_reported() -> int:
    """The database's deadlock count, once every pooled connection has reported its own."""
    engine = db.engine
    idle = [engine.connect() for _ in range(engine.pool.checkedin())]
    for connection in idle:
        connection.execute(text("SELECT pg_stat_force_next_flush()"))
        connection.commit()
    # Each reported when it went idle after the commit, before it reads this.
    for connection in idle:
        connection.execute(text("SELECT 1"))
        connection.close()
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            connection.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def run_threads(app, jobs: list[Callable[[], None]]) -> list[BaseException]:
    """Run each job in its own thread and app context, all starting together; their errors."""
    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            with app.app_context():
                start.wait()
                job()
                db.session.remove()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def test_the_deadlock_count_sees_a_deadlock(client):
    # The instrument itself: two transactions taking two bots in opposite orders.
    bots = [client.post("/bots", json={"name": f"b{i}", "tier": "standard"}).get_json()["id"]
            for i in range(2)]  # fmt: skip
    before = deadlocks_reported()
    both_hold = threading.Barrier(2)
    broken: list[BaseException] = []

    def lock(first: str, second: str) -> Callable[[], None]:
        def job() -> None:
            try:
                db.session.execute(
                    text("UPDATE bots SET total_tasks = total_tasks WHERE id = :id"), {"id": first}
                )
                both_hold.wait()
                db.session.execute(
                    text("UPDATE bots SET total_tasks = total_tasks WHERE id = :id"), {"id": second}
                )
                db.session.commit()
            except OperationalError as error:
                db.session.rollback()
                broken.append(error.orig)

        return job

    assert run_threads(client.application, [lock(*bots), lock(*reversed(bots))]) == []
    assert len(broken) == 1 and isinstance(broken[0], DeadlockDetected)
    assert deadlocks_reported() == before + 1


def test_assignments_completions_and_chunks_over_shared_bots_never_deadlock(client):
    app = client.application
    swarm = client.post(
        "/swarms", json={"name": "shared", "count": BOTS, "tier": "standard"}
    ).get_json()
    bot_ids = swarm["bot_ids"]
    # Two mass-actions now; two more are created while everything else runs.
    for _ in range(2):
        created = client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"})
        assert created.status_code == 202
    before = deadlocks_reported()
    singles: list[tuple[str, int]] = []
    singles_lock = threading.Lock()

    def tasks_of_mass_actions() -> list[int]:
        rows = db.session.execute(
            text("SELECT id FROM tasks WHERE mass_action_id IS NOT NULL AND status = 'assigned'")
        ).all()
        db.session.commit()
        return [row[0] for row in rows]

    def record_chunks(seed: int) -> Callable[[], None]:
        # Chunks whose tasks (and so bots) come in a different order in each thread.
        def job() -> None:
            rng = random.Random(seed)
            for _ in range(ROUNDS):
                ids = tasks_of_mass_actions()
                rng.shuffle(ids)
                for start in range(0, len(ids), CHUNK):
                    execution.run_chunk(ids[start : start + CHUNK])

        return job

    def assign_singles(seed: int) -> Callable[[], None]:
        def job() -> None:
            rng = random.Random(seed)
            for i in range(SINGLES_PER_THREAD):
                bot_id = rng.choice(bot_ids)
                done = assignments.assign_to_bot(bot_id, "echo", {"i": i})
                with singles_lock:
                    singles.append((bot_id, done.task_id))
                if i % 30 == 0:
                    mass_actions.assign_to_swarm(swarm["id"], "echo", {"seed": seed})

        return job

    def complete_by_hand() -> None:
        # Single tasks as they come, and mass-action tasks a chunk may be recording right now.
        rng = random.Random(7)
        for _ in range(SINGLES_PER_THREAD * 2):
            with singles_lock:
                pending = singles[:]
            if pending:
                assignments.complete_task(*rng.choice(pending), {"by": "hand"})
            for task_id in tasks_of_mass_actions()[:2]:
                bot_id = db.session.scalar(
                    text("SELECT bot_id FROM tasks WHERE id = :id"), {"id": task_id}
                )
                try:
                    assignments.complete_task(bot_id, task_id, {"by": "hand"})
                except Conflict:  # a chunk got there first: 409 is the answer
                    pass

    jobs = [record_chunks(1), record_chunks(2), assign_singles(3), assign_singles(4),
            complete_by_hand]  # fmt: skip
    assert run_threads(app, jobs) == []

    assert deadlocks_reported() == before
    # Everything left is recorded, and every counter agrees with the task rows.
    with app.app_context():
        left = tasks_of_mass_actions() + [task_id for _, task_id in singles]
        execution.run_chunk(left)
        assert check_invariants(db.session) == []
        assert db.session.scalar(
            text("SELECT count(*) FROM tasks WHERE mass_action_id IS NOT NULL")
        ) == BOTS * (2 + 2 * 2)


def metric(client, name: str) -> float:
    """One sample of GET /metrics, by its exact name and labels."""
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_show_lock_waits_now_and_deadlocks_so_far(client):
    bot = client.post("/bots", json={"name": "held", "tier": "standard"}).get_json()["id"]
    assert metric(client, "orchestrator_postgres_backends_waiting_on_locks") == 0
    engine = db.engine  # the thread below has no app context
    holder = engine.connect()
    holder.execute(text("UPDATE bots SET total_tasks = total_tasks WHERE id = :id"), {"id": bot})
    waiter_done = threading.Event()

    def wait_for_the_row() -> None:
        with engine.connect() as waiter:
            waiter.execute(
                text("UPDATE bots SET total_tasks = total_tasks WHERE id = :id"), {"id": bot}
            )
            waiter.rollback()
        waiter_done.set()

    thread = threading.Thread(target=wait_for_the_row)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        with engine.connect() as watcher:
            while not watcher.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                     " AND wait_event_type = 'Lock'")
            ).scalar_one():  # fmt: skip
                watcher.rollback()
                assert time.monotonic() < deadline, "the second UPDATE never waited"
        assert metric(client, "orchestrator_postgres_backends_waiting_on_locks") == 1
        assert metric(client, 'orchestrator_postgres_lock_waits{locktype="transactionid"}') == 1
        assert metric(client, "orchestrator_postgres_lock_wait_longest_seconds") >= 0
    finally:
        holder.rollback()
        holder.close()
        thread.join(10)
    assert waiter_done.is_set()
    assert metric(client, "orchestrator_postgres_deadlocks_total") == deadlocks_reported()


def test_the_call_lease_heartbeat_skips_a_task_a_recorder_holds_instead_of_waiting(app, client):
    from app.services import calls

    swarm = client.post(
        "/swarms", json={"name": "s", "count": 3, "tier": "standard", "capabilities": []}
    ).get_json()
    mass_action_id = client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"}).get_json()[
        "mass_action_id"
    ]
    ids = list(
        db.session.execute(
            text(
                "UPDATE tasks SET status = 'running', lease_expires_at = now()"
                " WHERE mass_action_id = :id RETURNING id"
            ),
            {"id": mass_action_id},
        ).scalars()
    )
    db.session.commit()
    held, free = sorted(ids)[0], sorted(ids)[1:]
    calls._holdings["test-chunk"] = calls._Holding("image", set(), set(ids))
    recorder = db.engine.connect()
    recorder.execute(text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": held})
    renewed: list[int] = []

    def beat() -> None:
        with app.app_context():
            renewed.append(calls.renew_leases())

    thread = threading.Thread(target=beat)
    try:
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "the heartbeat waited on the locked task"
    finally:
        recorder.rollback()
        recorder.close()
        calls._holdings.pop("test-chunk", None)
        thread.join(10)
    leases = dict(
        db.session.execute(
            text(
                "SELECT id, lease_expires_at > now() + interval '20 seconds' FROM tasks"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": ids},
        ).all()
    )
    db.session.commit()
    assert renewed == [3]
    assert leases == {held: False, **{task_id: True for task_id in free}}

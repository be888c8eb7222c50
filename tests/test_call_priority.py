"""Priority in the I/O pool, in process and fast (tests/test_io_priority.py does the same with
real worker processes): an L20 call that arrives behind a standard backlog of calls to the same
full service takes the next freed slot, ahead of the backlog (app/services/calls.py, the lines
of app/services/inflight.py)."""

from __future__ import annotations

import threading

from sqlalchemy import text

from app.extensions import db
from app.services import calls
from tests.fake_services import Scripted
from tests.test_mass_actions import start
from tests.workers import wait_for

BACKLOG = 40
LIMIT = 2


def test_an_l20_call_behind_a_standard_backlog_takes_the_next_free_slot(app, client, fake_service):
    service = fake_service(default=Scripted(200, {"image": "x.png"}, delay=0.05))
    response = client.put("/services/image", json={"urls": [service.url], "max_concurrency": LIMIT})
    assert response.status_code == 200, response.get_json()
    swarm = client.post(
        "/swarms",
        json={"name": "s", "count": BACKLOG, "tier": "standard", "capabilities": ["ml_inference"]},
    ).get_json()
    accepted = start(client, swarm["id"], "image_generation", {"prompt": "backlog"})
    backlog = [
        row[0]
        for row in db.session.execute(
            text("SELECT id FROM tasks WHERE mass_action_id = :id ORDER BY id"),
            {"id": accepted["mass_action_id"]},
        )
    ]
    db.session.commit()
    assert len(backlog) == BACKLOG

    # The standard backlog runs in its chunk (as the I/O pool would run its message)...
    def run_backlog() -> None:
        with app.app_context():
            calls.run_call_chunk(backlog, "standard", "image_generation")

    runner = threading.Thread(target=run_backlog)
    runner.start()
    try:
        wait_for(lambda: len(service.requests) >= LIMIT, timeout=10, interval=0.01)
        # ...when an L20 task of the same service arrives: the service is full, so its chunk
        # only puts it in the L20 line and ends.
        bot = client.post(
            "/bots", json={"name": "vip", "tier": "L20", "capabilities": ["ml_inference"]}
        ).get_json()
        task = client.post(
            f"/bots/{bot['id']}/tasks", json={"type": "image_generation", "data": {"prompt": "now"}}
        ).get_json()
        l20_id = int(str(task["task_id"]).rsplit("-", 1)[-1])
        arrived_after = len(service.requests)
        counts = calls.run_call_chunk([l20_id], "L20", "image_generation")
        assert counts["called"] == 0  # full: it waits in its line, no thread holds it
    finally:
        runner.join(timeout=60)
    assert not runner.is_alive()

    prompts = [r.body["params"]["prompt"] for r in service.requests]
    assert prompts.count("backlog") == BACKLOG and prompts.count("now") == 1
    # Taken before the waiting backlog: at most the slots' worth of standard calls that were
    # already claimed ahead went first (without priority it would come last, after 40).
    assert prompts.index("now") <= arrived_after + 2 * LIMIT
    assert service.max_in_flight <= LIMIT
    status = db.session.execute(
        text("SELECT status FROM tasks WHERE id = :id"), {"id": l20_id}
    ).scalar_one()
    assert status == "completed"

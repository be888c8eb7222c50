"""Bots and swarms through the API: listing, pausing, scaling, retiring and the stats they add to."""

from __future__ import annotations

from sqlalchemy import text

from app.extensions import db

MAX_BOTS = 50_000


def create_swarm(client, count: int, tier: str = "standard", capabilities=(), name="sw") -> dict:
    response = client.post(
        "/swarms",
        json={"name": name, "count": count, "tier": tier, "capabilities": list(capabilities)},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def create_bot(client, name: str = "bot", tier: str = "standard", capabilities=()) -> dict:
    response = client.post(
        "/bots", json={"name": name, "tier": tier, "capabilities": list(capabilities)}
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def all_pages(client, path: str, limit: int) -> list[list[dict]]:
    """Every page of a listing, following next_after until it is null."""
    pages, after = [], None
    while True:
        separator = "&" if "?" in path else "?"
        url = f"{path}{separator}limit={limit}" + (f"&after={after}" if after else "")
        response = client.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["limit"] == limit
        pages.append(body["items"])
        after = body["next_after"]
        if after is None:
            return pages
        assert after == body["items"][-1]["id"]
        assert len(pages) < 100, "pagination does not end"


# ---- listing ---------------------------------------------------------------------------------


def test_list_bots_pages_through_every_bot_once_in_id_order(client):
    swarm = create_swarm(client, 23)
    lone = create_bot(client, "lone")

    pages = all_pages(client, "/bots", 5)

    assert [len(page) for page in pages] == [5, 5, 5, 5, 4]
    ids = [bot["id"] for page in pages for bot in page]
    assert ids == sorted(ids)
    assert set(ids) == set(swarm["bot_ids"]) | {lone["id"]}


def test_list_bots_last_full_page_is_followed_by_an_empty_one(client):
    create_swarm(client, 6)

    pages = all_pages(client, "/bots", 3)

    assert [len(page) for page in pages] == [3, 3, 0]


def test_list_bots_filters_by_tier_status_swarm_and_capability(client):
    a = create_swarm(client, 4, "L20", ["analytics"], name="a")
    b = create_swarm(client, 3, "advanced", ["reporting"], name="b")
    lone = create_bot(client, "lone", "L20", ["analytics", "reporting"])
    client.patch(f"/bots/{a['bot_ids'][0]}", json={"status": "paused"})
    client.delete(f"/bots/{b['bot_ids'][0]}")

    def ids(query: str) -> set[str]:
        body = client.get(f"/bots?{query}").get_json()
        assert body["next_after"] is None
        return {bot["id"] for bot in body["items"]}

    assert ids("tier=L20") == set(a["bot_ids"]) | {lone["id"]}
    assert ids("tier=l20") == ids("tier=L20")
    assert ids("tier=ADVANCED") == set(b["bot_ids"])
    assert ids("tier=standard") == set()
    assert ids(f"swarm_id={b['id']}") == set(b["bot_ids"])
    assert ids("capability=reporting") == set(b["bot_ids"]) | {lone["id"]}
    assert ids("status=paused") == {a["bot_ids"][0]}
    assert ids("status=retired") == {b["bot_ids"][0]}
    assert ids(f"status=active&swarm_id={a['id']}") == set(a["bot_ids"][1:])
    assert ids("tier=L20&capability=reporting") == {lone["id"]}
    # Filters combine with the cursor.
    first = client.get(f"/bots?swarm_id={a['id']}&limit=2").get_json()
    rest = client.get(f"/bots?swarm_id={a['id']}&limit=2&after={first['next_after']}").get_json()
    assert [bot["id"] for bot in first["items"] + rest["items"]] == sorted(a["bot_ids"])


def test_list_bots_item_shape(client):
    create_bot(client, "shape", "advanced", ["analytics"])

    (item,) = client.get("/bots").get_json()["items"]

    assert item["name"] == "shape"
    assert item["tier"] == "advanced"
    assert item["status"] == "active"
    assert item["capabilities"] == ["analytics"]
    assert item["swarm_id"] is None
    assert (item["tasks_completed"], item["total_tasks"], item["pending_tasks"]) == (0, 0, 0)


def test_list_swarms_pages_and_filters_by_status(client):
    swarms = [create_swarm(client, 1, name=f"s{i}") for i in range(7)]
    client.delete(f"/swarms/{swarms[0]['id']}")
    client.patch(f"/swarms/{swarms[1]['id']}", json={"status": "paused"})

    pages = all_pages(client, "/swarms", 3)

    assert [len(page) for page in pages] == [3, 3, 1]
    listed = [swarm for page in pages for swarm in page]
    assert [s["id"] for s in listed] == sorted(s["id"] for s in swarms)
    by_id = {s["id"]: s for s in listed}
    assert by_id[swarms[0]["id"]]["status"] == "retired"
    assert by_id[swarms[0]["id"]]["bot_count"] == 0
    assert by_id[swarms[2]["id"]]["bot_count"] == 1
    paused = client.get("/swarms?status=paused").get_json()["items"]
    assert [s["id"] for s in paused] == [swarms[1]["id"]]
    retired = client.get("/swarms?status=retired").get_json()["items"]
    assert [s["id"] for s in retired] == [swarms[0]["id"]]


# ---- pause and resume ----------------------------------------------------------------------


def test_pausing_and_resuming_a_bot_moves_active_bots(client):
    swarm = create_swarm(client, 5)
    bot_id = swarm["bot_ids"][2]

    paused = client.patch(f"/bots/{bot_id}", json={"status": "paused"})

    assert paused.status_code == 200
    assert paused.get_json()["status"] == "paused"
    assert client.get(f"/bots/{bot_id}").get_json()["status"] == "paused"
    view = client.get(f"/swarms/{swarm['id']}").get_json()
    assert (view["bot_count"], view["active_bots"]) == (5, 4)
    stats = client.get("/bots/stats").get_json()
    assert (stats["active_bots"], stats["capacity_remaining"]) == (4, MAX_BOTS - 5)

    resumed = client.patch(f"/bots/{bot_id}", json={"status": "active"})

    assert resumed.get_json()["status"] == "active"
    assert client.get(f"/swarms/{swarm['id']}").get_json()["active_bots"] == 5
    assert client.get("/bots/stats").get_json()["active_bots"] == 5


def test_pausing_twice_counts_once(client):
    bot = create_bot(client)

    for _ in range(2):
        assert client.patch(f"/bots/{bot['id']}", json={"status": "paused"}).status_code == 200

    stats = client.get("/bots/stats").get_json()
    assert stats["active_bots"] == 0
    assert stats["tier_distribution"]["standard"] == 1
    census = db.session.execute(text("SELECT status, n FROM bot_census WHERE n <> 0")).all()
    assert census == [("paused", 1)]


def test_pausing_and_resuming_a_swarm_moves_all_its_bots(client):
    swarm = create_swarm(client, 40, "advanced")
    other = create_swarm(client, 10, "advanced")

    body = client.patch(f"/swarms/{swarm['id']}", json={"status": "paused"}).get_json()

    assert (body["status"], body["bot_count"], body["active_bots"]) == ("paused", 40, 0)
    paused = client.get(f"/bots?swarm_id={swarm['id']}&status=paused&limit=1000").get_json()
    assert len(paused["items"]) == 40
    stats = client.get("/bots/stats").get_json()
    assert stats["active_bots"] == 10
    assert stats["tier_distribution"]["advanced"] == 50
    assert client.get(f"/swarms/{other['id']}").get_json()["active_bots"] == 10

    body = client.patch(f"/swarms/{swarm['id']}", json={"status": "active"}).get_json()

    assert (body["status"], body["active_bots"]) == ("active", 40)
    assert client.get("/bots/stats").get_json()["active_bots"] == 50


# ---- scaling -------------------------------------------------------------------------------


def test_scaling_a_swarm_up_adds_new_bots_with_new_ids(client):
    swarm = create_swarm(client, 10, "L20", ["analytics"])

    body = client.patch(f"/swarms/{swarm['id']}", json={"count": 25}).get_json()

    assert (body["bot_count"], body["active_bots"]) == (25, 25)
    listed = client.get(f"/bots?swarm_id={swarm['id']}&limit=1000").get_json()["items"]
    ids = {bot["id"] for bot in listed}
    assert len(ids) == 25
    assert set(swarm["bot_ids"]) < ids
    new = [bot for bot in listed if bot["id"] not in swarm["bot_ids"]]
    assert len(new) == 15
    assert all(bot["tier"] == "L20" and bot["capabilities"] == ["analytics"] for bot in new)
    stats = client.get("/bots/stats").get_json()
    assert stats["total_created"] == 25
    assert stats["active_bots"] == 25
    assert stats["capacity_remaining"] == MAX_BOTS - 25


def test_scaling_a_swarm_down_retires_the_newest_bots_and_frees_capacity(client):
    swarm = create_swarm(client, 20)
    bigger = client.patch(f"/swarms/{swarm['id']}", json={"count": 30}).get_json()
    assert bigger["bot_count"] == 30

    body = client.patch(f"/swarms/{swarm['id']}", json={"count": 8}).get_json()

    assert (body["bot_count"], body["active_bots"]) == (8, 8)
    live = client.get(f"/bots?swarm_id={swarm['id']}&status=active&limit=1000").get_json()
    # The original bots are the oldest; the first eight of them are kept.
    names = sorted(int(bot["name"].rsplit("-", 1)[1]) for bot in live["items"])
    assert names == list(range(1, 9))
    retired = client.get(f"/bots?swarm_id={swarm['id']}&status=retired&limit=1000").get_json()
    assert len(retired["items"]) == 22
    stats = client.get("/bots/stats").get_json()
    assert stats["total_created"] == 30
    assert stats["active_bots"] == 8
    assert stats["capacity_remaining"] == MAX_BOTS - 8

    # Growing again makes fresh bots, never reviving retired ones.
    again = client.patch(f"/swarms/{swarm['id']}", json={"count": 10}).get_json()
    assert again["bot_count"] == 10
    live = client.get(f"/bots?swarm_id={swarm['id']}&status=active&limit=1000").get_json()
    retired_ids = {bot["id"] for bot in retired["items"]}
    assert not retired_ids & {bot["id"] for bot in live["items"]}
    assert client.get("/bots/stats").get_json()["total_created"] == 32


def test_scaling_a_swarm_to_zero_keeps_it_listed_with_no_bots(client):
    swarm = create_swarm(client, 5)

    body = client.patch(f"/swarms/{swarm['id']}", json={"count": 0}).get_json()

    assert (body["bot_count"], body["active_bots"], body["status"]) == (0, 0, "active")
    assert body["average_tasks_per_bot"] == 0.0
    assert client.get("/bots/stats").get_json()["capacity_remaining"] == MAX_BOTS


def test_scaling_a_paused_swarm_adds_paused_bots(client):
    swarm = create_swarm(client, 4)
    client.patch(f"/swarms/{swarm['id']}", json={"status": "paused"})

    body = client.patch(f"/swarms/{swarm['id']}", json={"count": 6}).get_json()

    assert (body["bot_count"], body["active_bots"], body["status"]) == (6, 0, "paused")
    body = client.patch(f"/swarms/{swarm['id']}", json={"status": "active"}).get_json()
    assert body["active_bots"] == 6


# ---- retiring ------------------------------------------------------------------------------


def test_retiring_a_bot_cancels_its_waiting_tasks(client):
    bot = create_bot(client, capabilities=["data_processing"])
    for _ in range(3):
        assert client.post(f"/bots/{bot['id']}/tasks", json={"type": "echo"}).status_code == 202
    assert client.get(f"/bots/{bot['id']}").get_json()["pending_tasks"] == 3

    body = client.delete(f"/bots/{bot['id']}")

    assert body.status_code == 200
    body = body.get_json()
    assert body["status"] == "retired"
    assert (body["total_tasks"], body["pending_tasks"], body["tasks_completed"]) == (3, 0, 0)
    tasks = client.get(f"/bots/{bot['id']}/tasks").get_json()["items"]
    assert [task["status"] for task in tasks] == ["cancelled"] * 3
    stats = client.get("/bots/stats").get_json()
    assert (stats["active_bots"], stats["capacity_remaining"]) == (0, MAX_BOTS)
    assert stats["tasks_executed"] == 0
    # Retiring again changes nothing.
    again = client.delete(f"/bots/{bot['id']}").get_json()
    assert again == {**body, "last_active": again["last_active"]}


def test_retiring_a_swarm_cancels_waiting_tasks_and_frees_capacity(client):
    swarm = create_swarm(client, 50, "advanced")
    other = create_swarm(client, 5, "advanced")
    for target in (swarm, other):
        response = client.post(f"/swarms/{target['id']}/tasks", json={"type": "echo"})
        assert response.get_json()["assignments"] == len(target["bot_ids"])

    body = client.delete(f"/swarms/{swarm['id']}").get_json()

    assert (body["status"], body["bot_count"], body["active_bots"]) == ("retired", 0, 0)
    assert body["total_tasks_assigned"] == 50
    assert body["total_tasks_completed"] == 0
    member = client.get(f"/bots/{swarm['bot_ids'][7]}").get_json()
    assert (member["status"], member["pending_tasks"], member["total_tasks"]) == ("retired", 0, 1)
    by_status = dict(
        db.session.execute(
            text("SELECT status, count(*) FROM tasks WHERE swarm_id = :s GROUP BY status"),
            {"s": swarm["id"]},
        ).all()
    )
    assert by_status == {"cancelled": 50}
    # The other swarm's tasks are untouched.
    assert client.get(f"/bots/{other['bot_ids'][0]}").get_json()["pending_tasks"] == 1
    stats = client.get("/bots/stats").get_json()
    assert stats["swarm_count"] == 1
    assert stats["active_bots"] == 5
    assert stats["capacity_remaining"] == MAX_BOTS - 5
    assert stats["tier_distribution"] == {"standard": 0, "advanced": 5, "L20": 0}


# ---- stats ---------------------------------------------------------------------------------


def test_stats_are_exact_after_a_mix_of_operations(client):
    empty = client.get("/bots/stats").get_json()
    assert empty["total_created"] == 0
    assert empty["utilization_percent"] == 0.0
    assert empty["tier_distribution"] == {"standard": 0, "advanced": 0, "L20": 0}

    a = create_swarm(client, 1000, "L20", name="a")
    b = create_swarm(client, 333, "advanced", name="b")
    c = create_swarm(client, 7, "standard", name="c")
    create_bot(client, "x", "standard")
    create_bot(client, "y", "l20")
    client.patch(f"/swarms/{a['id']}", json={"count": 1200})  # +200 created
    client.patch(f"/swarms/{b['id']}", json={"count": 300})  # 33 retired
    client.patch(f"/swarms/{c['id']}", json={"status": "paused"})  # 7 paused, still live
    client.delete(f"/bots/{a['bot_ids'][0]}")  # 1 retired
    client.patch(f"/bots/{a['bot_ids'][1]}", json={"status": "paused"})  # 1 paused

    stats = client.get("/bots/stats").get_json()

    live = 1199 + 300 + 7 + 2
    assert stats["total_created"] == 1000 + 333 + 7 + 2 + 200
    assert stats["active_bots"] == live - 7 - 1
    assert stats["tier_distribution"] == {"standard": 8, "advanced": 300, "L20": 1200}
    assert list(stats["tier_distribution"]) == ["standard", "advanced", "L20"]
    assert stats["swarm_count"] == 3
    assert stats["capacity_remaining"] == MAX_BOTS - live
    assert stats["utilization_percent"] == round(live / MAX_BOTS * 100, 2) == 3.02
    assert isinstance(stats["utilization_percent"], float)
    assert stats["tasks_executed"] == 0

    client.delete(f"/swarms/{c['id']}")
    stats = client.get("/bots/stats").get_json()
    assert stats["swarm_count"] == 2
    assert stats["tier_distribution"]["standard"] == 1


def test_utilization_percent_is_rounded_to_two_places(client):
    create_swarm(client, 1, name="one")
    create_swarm(client, 6, name="six")  # 7 / 50000 = 0.014 %

    assert client.get("/bots/stats").get_json()["utilization_percent"] == 0.01

    create_swarm(client, 3328, name="more")  # 3335 / 50000 = 6.67 %
    assert client.get("/bots/stats").get_json()["utilization_percent"] == 6.67


def test_tier_in_any_case_is_answered_canonically(client):
    cases = {"l20": "L20", "ADVANCED": "advanced", "Standard": "standard", " l20 ": "L20"}
    for given, canonical in cases.items():
        bot = create_bot(client, f"b-{canonical}", given)
        assert bot["tier"] == canonical
        assert client.get(f"/bots/{bot['id']}").get_json()["tier"] == canonical
        swarm = create_swarm(client, 2, given)
        assert swarm["tier"] == canonical
        assert client.get(f"/swarms/{swarm['id']}").get_json()["tier"] == canonical

    distribution = client.get("/bots/stats").get_json()["tier_distribution"]
    assert distribution == {"standard": 3, "advanced": 3, "L20": 6}


def test_a_swarm_with_the_longest_name_names_its_bots_within_the_limit(client):
    name = "s" * 200  # the longest name a swarm may have

    created = client.post("/swarms", json={"name": name, "count": 12, "tier": "standard"})

    assert created.status_code == 201, created.get_json()
    swarm = created.get_json()
    assert swarm["name"] == name
    last = client.get(f"/bots/{swarm['bot_ids'][-1]}").get_json()
    assert last["name"] == "s" * 197 + "-12"
    scaled = client.patch(f"/swarms/{swarm['id']}", json={"count": 13})
    assert scaled.status_code == 200

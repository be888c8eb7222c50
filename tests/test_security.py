"""Who may call what: the authorization matrix over the whole route table, tenant isolation and
quotas, per-key rate limits, API keys from `flask keys`, and the audit log."""

from __future__ import annotations

import base64
import hashlib
import os
import re

import pytest
from sqlalchemy import text

from app import create_app
from app.api.auth import ADMIN_ENDPOINTS, GLOBAL_ENDPOINTS, OPEN_ENDPOINTS, required_role
from app.config import Settings
from app.extensions import db
from app.services import keys

# ---- helpers ---------------------------------------------------------------------------------


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(name: str, role: str, tenant: str | None = None) -> str:
    """A stored key, created the way `flask keys create` does; returns its plaintext."""
    return keys.create_key(name, role, tenant)[1]


def ok(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()


def row_counts() -> dict[str, int]:
    """The row count of every table but the audit log (which records allowed writes)."""
    tables = db.session.scalars(
        text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename NOT IN ('alembic_version', 'audit_log') ORDER BY tablename"
        )
    ).all()
    counts = {
        table: db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        for table in tables
    }
    db.session.commit()
    return counts


def app_with(test_env: dict[str, str], **overrides: str):
    """An app on this run's database and Redis with some settings changed."""
    return create_app(Settings.from_env({**os.environ, **test_env, **overrides}))


@pytest.fixture()
def callers(app):
    """A key per role without a tenant, and operator keys of tenants A and B."""
    assert app.config["SETTINGS"].anonymous_role is None
    return {
        "viewer": make_key("viewer", "viewer"),
        "operator": make_key("operator", "operator"),
        "admin": make_key("admin", "admin"),
        "tenant_a": make_key("tenant-a-ops", "operator", "tenant-a"),
        "tenant_b": make_key("tenant-b-ops", "operator", "tenant-b"),
    }


@pytest.fixture()
def tenant_a(client, callers):
    """Tenant A's work: a bot with a task, a swarm with a mass-action, and a workflow."""
    headers = bearer(callers["tenant_a"])
    bot = ok(client.post("/bots", json={"name": "a-bot", "tier": "L20"}, headers=headers), 201)
    task = ok(client.post(f"/bots/{bot['id']}/tasks", json={"type": "echo"}, headers=headers), 202)
    swarm = ok(
        client.post(
            "/swarms", json={"name": "a-swarm", "count": 3, "tier": "advanced"}, headers=headers
        ),
        201,
    )
    mass = ok(
        client.post(f"/swarms/{swarm['id']}/tasks", json={"type": "echo"}, headers=headers), 202
    )
    assert mass["assignments"] == 3
    workflow = ok(
        client.post("/orchestrate", json={"tasks": [{"type": "echo"}]}, headers=headers), 202
    )
    return {
        "bot_id": bot["id"],
        "task_id": task["task_id"],
        "swarm_id": swarm["id"],
        "swarm_bot_ids": swarm["bot_ids"],
        "workflow_id": workflow["task_id"],
        "mass_action_id": mass["mass_action_id"],
    }


# ---- the authorization matrix ----------------------------------------------------------------

# The policy, reviewed by hand: every route and method with the least role it needs (None: open)
# and whether a tenant key is refused. The matrix below checks that app/api/auth.py derives
# exactly this, and that the running app enforces it. A new route fails here until it is added.
POLICY: dict[str, tuple[str | None, bool]] = {
    "GET /audit": ("admin", True),
    "GET /bots": ("viewer", False),
    "POST /bots": ("operator", False),
    "GET /bots/<bot:bot_id>": ("viewer", False),
    "PATCH /bots/<bot:bot_id>": ("operator", False),
    "DELETE /bots/<bot:bot_id>": ("operator", False),
    "GET /bots/<bot:bot_id>/tasks": ("viewer", False),
    "POST /bots/<bot:bot_id>/tasks": ("operator", False),
    "POST /bots/<bot:bot_id>/tasks/<task_id>/complete": ("operator", False),
    "GET /bots/stats": ("viewer", False),
    "GET /dashboard": (None, False),
    "GET /dashboard/data": ("viewer", True),
    "GET /docs": (None, False),
    "GET /health": (None, False),
    "GET /metrics": ("viewer", True),
    "GET /openapi.json": (None, False),
    "POST /orchestrate": ("operator", False),
    "GET /scaling": ("viewer", True),
    "GET /services": ("viewer", False),
    "GET /services/<name>": ("viewer", False),
    "PUT /services/<name>": ("admin", False),
    "GET /static/<path:filename>": (None, False),
    "GET /swarms": ("viewer", False),
    "POST /swarms": ("operator", False),
    "GET /swarms/<swarm_id>": ("viewer", False),
    "PATCH /swarms/<swarm_id>": ("operator", False),
    "DELETE /swarms/<swarm_id>": ("operator", False),
    "POST /swarms/<swarm_id>/tasks": ("operator", False),
    "GET /swarms/<swarm_id>/mass-actions": ("viewer", False),
    "GET /mass-actions/<mass_action_id>": ("viewer", False),
    "DELETE /mass-actions/<mass_action_id>": ("operator", False),
    "GET /mass-actions/<mass_action_id>/results": ("viewer", False),
    "POST /mass-actions/<mass_action_id>/cancel": ("operator", False),
    "GET /task-types": ("viewer", False),
    "GET /task/<task_id>": ("viewer", False),
    "DELETE /task/<task_id>": ("operator", False),
    "POST /task/<task_id>/cancel": ("operator", False),
}
CALLERS = ("none", "viewer", "tenant_b", "operator", "admin")
ROLE_OF = {"viewer": "viewer", "operator": "operator", "admin": "admin", "tenant_b": "operator"}
RANK = {"viewer": 0, "operator": 1, "admin": 2}
# Path parameters naming another tenant's work: such a route answers 404 to tenant B.
TENANT_PARAMETERS = {"bot_id", "swarm_id", "task_id", "mass_action_id"}

# A valid body per write endpoint, so an allowed call gets past validation.
BODIES: dict[str, object] = {
    "bots.create_bot": {"name": "m", "tier": "standard"},
    "bots.update_bot": {"status": "paused"},
    "bots.assign_task": {"type": "echo"},
    "bots.complete_task": {"result": {"ok": True}},
    "swarms.create_swarm": {"name": "m", "count": 2, "tier": "standard"},
    "swarms.update_swarm": {"count": 4},
    "swarms.assign_to_swarm": {"type": "echo"},
    "workflows.orchestrate": {"tasks": [{"type": "echo"}]},
    "services.update_service": {"timeout_s": 5},
}


def route_table(app) -> list[tuple[str, str, object]]:
    """Every (method, rule, Rule) of the app, HEAD and OPTIONS aside."""
    return sorted(
        (
            (method, rule.rule, rule)
            for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}
        ),
        key=lambda entry: entry[:2],
    )


def expected_outcome(rule, method: str, caller: str) -> str:
    """'401', '403', '404' or 'allowed' (anything but 401 and 403), from required_role."""
    role = required_role(rule.endpoint, method)
    if role is None:
        return "allowed"
    if caller == "none":
        return "401"
    if RANK[ROLE_OF[caller]] < RANK[role]:
        return "403"
    if caller == "tenant_b" and rule.endpoint in GLOBAL_ENDPOINTS:
        return "403"
    if caller == "tenant_b" and TENANT_PARAMETERS & set(rule.arguments):
        return "404"
    return "allowed"


def test_route_table_matches_the_reviewed_policy(app):
    derived = {
        f"{method} {path}": (
            required_role(rule.endpoint, method),
            rule.endpoint in GLOBAL_ENDPOINTS,
        )
        for method, path, rule in route_table(app)
    }

    assert derived == POLICY
    # The sets in auth.py name only endpoints that exist.
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert OPEN_ENDPOINTS | ADMIN_ENDPOINTS | GLOBAL_ENDPOINTS <= endpoints


def test_every_route_answers_every_caller_as_required_role_says(
    app, client, anonymous_client, callers, tenant_a
):
    params = {
        "bot_id": tenant_a["bot_id"],
        "swarm_id": tenant_a["swarm_id"],
        "mass_action_id": tenant_a["mass_action_id"],
        "name": "image",
        "filename": "dashboard.js",
    }
    checked, visited, failures = 0, set(), []
    for method, path, rule in route_table(app):
        values = dict(params)
        if rule.endpoint == "bots.complete_task":
            values["task_id"] = tenant_a["task_id"]
        else:
            values["task_id"] = tenant_a["workflow_id"]
        url = rule.build(values, append_unknown=False)[1]
        body = BODIES.get(rule.endpoint)
        for caller in CALLERS:
            kwargs = {"method": method}
            if body is not None:
                kwargs["json"] = body
            if caller == "none":
                response = anonymous_client.open(url, **kwargs)
            else:
                response = client.open(url, headers=bearer(callers[caller]), **kwargs)
            expected = expected_outcome(rule, method, caller)
            status = response.status_code
            passed = status not in (401, 403) if expected == "allowed" else str(status) == expected
            if status >= 500 or not passed:
                failures.append(f"{caller:9} {method:6} {url}: expected {expected}, got {status}")
            if status in (401, 403, 404):
                error = response.get_json()["error"]
                assert error["status"] == status
            if status == 401:
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            checked += 1
        visited.add((method, path))

    assert failures == []
    assert visited == {tuple(entry.split(" ", 1)) for entry in POLICY}
    assert checked == len(POLICY) * len(CALLERS) == 185


def test_a_tenant_admin_key_is_refused_global_views_but_not_its_own_work(client):
    key = make_key("tenant-admin", "admin", "tenant-a")

    for path in ("/audit", "/scaling", "/dashboard/data"):
        error = ok(client.get(path, headers=bearer(key)), 403)["error"]
        assert error["code"] == "forbidden"
        assert "tenant" in error["message"]
    assert client.get("/bots/stats", headers=bearer(key)).status_code == 200


# ---- tenant isolation ------------------------------------------------------------------------


def test_another_tenant_gets_404_for_every_call_on_a_tenants_work(client, callers, tenant_a):
    other = bearer(callers["tenant_b"])
    bot, swarm = tenant_a["bot_id"], tenant_a["swarm_id"]
    task, workflow = tenant_a["task_id"], tenant_a["workflow_id"]
    swarm_bot = tenant_a["swarm_bot_ids"][0]
    mass_action = tenant_a["mass_action_id"]
    before = row_counts()

    calls = [
        ("GET", f"/bots/{bot}", None),
        ("PATCH", f"/bots/{bot}", {"status": "paused"}),
        ("DELETE", f"/bots/{bot}", None),
        ("GET", f"/bots/{bot}/tasks", None),
        ("POST", f"/bots/{bot}/tasks", {"type": "echo"}),
        ("POST", f"/bots/{bot}/tasks/{task}/complete", {"result": 1}),
        ("GET", f"/bots/{swarm_bot}", None),
        ("DELETE", f"/bots/{swarm_bot}", None),
        ("GET", f"/swarms/{swarm}", None),
        ("PATCH", f"/swarms/{swarm}", {"count": 10}),
        ("PATCH", f"/swarms/{swarm}", {"status": "paused"}),
        ("DELETE", f"/swarms/{swarm}", None),
        ("POST", f"/swarms/{swarm}/tasks", {"type": "echo"}),
        ("GET", f"/swarms/{swarm}/mass-actions", None),
        ("GET", f"/mass-actions/{mass_action}", None),
        ("GET", f"/mass-actions/{mass_action}/results", None),
        ("DELETE", f"/mass-actions/{mass_action}", None),
        ("POST", f"/mass-actions/{mass_action}/cancel", None),
        ("GET", f"/task/{task}", None),
        ("DELETE", f"/task/{task}", None),
        ("POST", f"/task/{task}/cancel", None),
        ("GET", f"/task/{workflow}", None),
        ("DELETE", f"/task/{workflow}", None),
        ("POST", f"/task/{workflow}/cancel", None),
    ]
    for method, path, body in calls:
        kwargs = {"json": body} if body is not None else {}
        response = client.open(path, method=method, headers=other, **kwargs)
        error = ok(response, 404)["error"]
        assert error["code"] == "not_found", (method, path)

    assert row_counts() == before
    owner = bearer(callers["tenant_a"])
    assert ok(client.get(f"/bots/{bot}", headers=owner), 200)["status"] == "active"
    assert ok(client.get(f"/swarms/{swarm}", headers=owner), 200)["status"] == "active"
    assert ok(client.get(f"/task/{workflow}", headers=owner), 200)["status"] != "cancelled"
    assert ok(client.get(f"/task/{task}", headers=owner), 200)["status"] == "assigned"


def test_lists_and_stats_show_a_tenant_only_its_own_work(client, callers, tenant_a):
    a, b = bearer(callers["tenant_a"]), bearer(callers["tenant_b"])
    a_bots = {tenant_a["bot_id"], *tenant_a["swarm_bot_ids"]}

    # Before B has anything, B sees nothing at all.
    assert ok(client.get("/bots", headers=b), 200)["items"] == []
    assert ok(client.get("/swarms", headers=b), 200)["items"] == []
    assert ok(client.get(f"/bots?swarm_id={tenant_a['swarm_id']}", headers=b), 200)["items"] == []
    b_stats = ok(client.get("/bots/stats", headers=b), 200)
    assert {key: b_stats[key] for key in ZERO_STATS} == ZERO_STATS

    a_stats = ok(client.get("/bots/stats", headers=a), 200)
    assert {key: a_stats[key] for key in ZERO_STATS} == {
        "total_created": 4,
        "active_bots": 4,
        "live_bots": 4,
        "tasks_executed": 0,
        "tasks_assigned": 4,  # one to the bot, three by the mass-action
        "tasks_failed": 0,
        "tier_distribution": {"standard": 0, "advanced": 3, "L20": 1},
        "swarm_count": 1,
    }

    b_bot = ok(client.post("/bots", json={"name": "b-bot", "tier": "standard"}, headers=b), 201)
    b_swarm = ok(
        client.post("/swarms", json={"name": "b-sw", "count": 2, "tier": "L20"}, headers=b), 201
    )
    b_bots = {b_bot["id"], *b_swarm["bot_ids"]}

    assert {bot["id"] for bot in ok(client.get("/bots", headers=a), 200)["items"]} == a_bots
    assert {bot["id"] for bot in ok(client.get("/bots", headers=b), 200)["items"]} == b_bots
    assert [s["id"] for s in ok(client.get("/swarms", headers=a), 200)["items"]] == [
        tenant_a["swarm_id"]
    ]
    assert [s["id"] for s in ok(client.get("/swarms", headers=b), 200)["items"]] == [b_swarm["id"]]
    # A's figures are unchanged by B's work.
    assert ok(client.get("/bots/stats", headers=a), 200)["total_created"] == 4
    assert ok(client.get("/bots/stats", headers=b), 200)["live_bots"] == 3

    # A key without a tenant sees both.
    admin = bearer(callers["admin"])
    everything = {bot["id"] for bot in ok(client.get("/bots", headers=admin), 200)["items"]}
    assert everything == a_bots | b_bots
    swarms = {s["id"] for s in ok(client.get("/swarms", headers=admin), 200)["items"]}
    assert swarms == {tenant_a["swarm_id"], b_swarm["id"]}
    service = ok(client.get("/bots/stats", headers=admin), 200)
    assert (service["total_created"], service["live_bots"], service["swarm_count"]) == (7, 7, 2)
    for path in (f"/bots/{tenant_a['bot_id']}", f"/bots/{b_bot['id']}", f"/swarms/{b_swarm['id']}"):
        assert client.get(path, headers=admin).status_code == 200
    assert client.get(f"/task/{tenant_a['workflow_id']}", headers=admin).status_code == 200


ZERO_STATS = {
    "total_created": 0,
    "active_bots": 0,
    "live_bots": 0,
    "tasks_executed": 0,
    "tasks_assigned": 0,
    "tasks_failed": 0,
    "tier_distribution": {"standard": 0, "advanced": 0, "L20": 0},
    "swarm_count": 0,
}


@pytest.fixture()
def quota_app(test_env):
    """An app on the run's database whose tenants may have 100 live bots each."""
    flask_app = app_with(test_env, TENANT_MAX_BOTS="100")
    yield flask_app
    with flask_app.app_context():
        db.engine.dispose()


def test_tenant_quota_stops_a_tenant_at_tenant_max_bots_and_no_one_else(quota_app, callers):
    client = quota_app.test_client()
    a, b = bearer(callers["tenant_a"]), bearer(callers["tenant_b"])
    swarm = {"name": "q", "tier": "standard"}

    error = ok(client.post("/swarms", json={**swarm, "count": 101}, headers=a), 409)["error"]
    assert (error["code"], error["capacity_remaining"], error["requested"]) == (
        "over_capacity",
        100,
        101,
    )
    assert ok(client.post("/swarms", json={**swarm, "count": 99}, headers=a), 201)
    assert ok(client.post("/bots", json={"name": "last", "tier": "L20"}, headers=a), 201)
    full = row_counts()

    error = ok(client.post("/bots", json={"name": "one-more", "tier": "L20"}, headers=a), 409)
    assert (error["error"]["capacity_remaining"], error["error"]["requested"]) == (0, 1)
    error = ok(client.post("/swarms", json={**swarm, "count": 5}, headers=a), 409)
    assert (error["error"]["capacity_remaining"], error["error"]["requested"]) == (0, 5)
    assert row_counts() == full

    # Another tenant has its own quota, and a key without a tenant only the service's capacity.
    assert ok(client.post("/swarms", json={**swarm, "count": 100}, headers=b), 201)
    admin = bearer(callers["admin"])
    assert ok(client.post("/swarms", json={**swarm, "count": 500}, headers=admin), 201)
    stats = ok(client.get("/bots/stats", headers=admin), 200)
    assert stats["live_bots"] == 700
    assert stats["capacity_remaining"] == 50_000 - 700
    # A tenant sees what it can still create: its quota is the limit, not the service's room.
    a_stats = ok(client.get("/bots/stats", headers=a), 200)
    assert (a_stats["live_bots"], a_stats["capacity_remaining"]) == (100, 0)
    assert a_stats["utilization_percent"] == 100.0

    # Retiring one of A's bots gives A room for exactly one more.
    a_bot = ok(client.get("/bots?limit=1", headers=a), 200)["items"][0]["id"]
    assert ok(client.delete(f"/bots/{a_bot}", headers=a), 200)
    assert ok(client.post("/bots", json={"name": "again", "tier": "L20"}, headers=a), 201)
    assert client.post("/bots", json={"name": "no", "tier": "L20"}, headers=a).status_code == 409


# ---- rate limits -----------------------------------------------------------------------------


@pytest.fixture()
def limited_app(test_env):
    """An app allowing 5 requests a second per key, and 2 heavy calls a minute."""
    flask_app = app_with(test_env, RATE_LIMIT="5 per second", RATE_LIMIT_HEAVY="2 per minute")
    yield flask_app
    with flask_app.app_context():
        db.engine.dispose()


def assert_rate_limited(response) -> int:
    """A 429 in the JSON error shape with Retry-After; returns Retry-After in seconds."""
    error = ok(response, 429)["error"]
    assert (error["status"], error["code"]) == (429, "rate_limited")
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def test_sixth_request_within_a_second_gets_429_but_another_key_passes(limited_app, callers):
    client = limited_app.test_client()
    first, second = bearer(callers["viewer"]), bearer(callers["operator"])

    statuses = [client.get("/bots", headers=first).status_code for _ in range(6)]

    assert statuses[:5] == [200] * 5
    response = client.get("/bots", headers=first)
    assert_rate_limited(response)
    assert "5 per 1 second" in response.get_json()["error"]["message"]
    assert client.get("/bots", headers=second).status_code == 200
    # The admin key from the environment is limited on its own too.
    assert client.get("/bots").status_code == 200


def test_third_swarm_creation_within_a_minute_gets_429_and_creates_nothing(limited_app, callers):
    client = limited_app.test_client()
    first, second = bearer(callers["operator"]), bearer(callers["tenant_a"])
    body = {"name": "rl", "count": 2, "tier": "standard"}
    assert ok(client.post("/swarms", json=body, headers=first), 201)
    assert ok(client.post("/swarms", json=body, headers=first), 201)
    before = row_counts()

    retry_after = assert_rate_limited(client.post("/swarms", json=body, headers=first))

    assert 1 < retry_after <= 61  # a minute from the first call, rounded up
    assert row_counts() == before
    # The heavy limit is per key, and plain reads by the same key are not heavy.
    assert ok(client.post("/swarms", json=body, headers=second), 201)
    assert client.get("/swarms", headers=first).status_code == 200


# ---- API keys --------------------------------------------------------------------------------


def test_flask_keys_create_list_revoke_round_trip(app, client):
    runner = app.test_cli_runner()

    created = runner.invoke(args=["keys", "create", "--role", "operator", "--name", "ci"])

    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip()
    assert re.fullmatch(r"orch_[A-Za-z0-9_-]{40,}", plaintext)
    assert "created operator key 'ci'" in created.stderr
    basic = base64.b64encode(f"{plaintext}:".encode()).decode()
    for headers in (
        {"Authorization": f"Bearer {plaintext}"},
        {"X-API-Key": plaintext},
        {"Authorization": f"Basic {basic}"},
    ):
        # A write, so the operator role (not just any valid key) is what lets it through.
        response = client.post("/bots", json={"name": "ci-bot", "tier": "L20"}, headers=headers)
        assert response.status_code == 201, (headers, response.get_data(as_text=True))

    listing = runner.invoke(args=["keys", "list"])
    assert listing.exit_code == 0, listing.output
    (line,) = [line for line in listing.stdout.splitlines() if line.startswith("ci\t")]
    assert line.split("\t")[:4] == ["ci", "operator", "-", f"{plaintext[:9]}…"]
    assert plaintext not in listing.output
    assert plaintext[9:] not in listing.output

    row = db.session.execute(text("SELECT api_keys::text, key_hash FROM api_keys")).one()
    assert plaintext not in row[0]
    assert plaintext[9:20] not in row[0]
    assert row[1] == hashlib.sha256(plaintext.encode()).hexdigest()
    db.session.commit()

    revoked = runner.invoke(args=["keys", "revoke", "ci"])
    assert revoked.exit_code == 0, revoked.output
    response = client.get("/bots", headers={"Authorization": f"Bearer {plaintext}"})
    error = ok(response, 401)["error"]
    assert error["message"] == "The API key is not valid."
    assert client.get("/bots", headers={"X-API-Key": plaintext}).status_code == 401
    assert "revoked" in runner.invoke(args=["keys", "list"]).stdout
    # No key's plaintext reached the audit log either.
    assert plaintext not in str(db.session.execute(text("SELECT * FROM audit_log")).all())


def test_flask_keys_refuses_a_duplicate_name_and_an_unknown_key(app):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["keys", "create", "--name", "dup"]).exit_code == 0

    duplicate = runner.invoke(args=["keys", "create", "--name", "dup"])
    unknown = runner.invoke(args=["keys", "revoke", "nobody"])

    assert duplicate.exit_code != 0 and "exists already" in duplicate.output
    assert unknown.exit_code != 0 and "No key named 'nobody'" in unknown.output
    assert db.session.execute(text("SELECT count(*) FROM api_keys")).scalar_one() == 1


def test_missing_key_gets_401_json_with_www_authenticate(anonymous_client):
    response = anonymous_client.get("/bots")

    error = ok(response, 401)["error"]
    assert (error["code"], error["message"]) == ("unauthorized", "An API key is required.")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="orchestrator"'
    # Open routes still answer without a key.
    assert anonymous_client.get("/health").status_code in (200, 503)
    assert anonymous_client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer orch_not-a-real-key"},
        {"X-API-Key": "orch_not-a-real-key"},
        {"Authorization": "Basic " + base64.b64encode(b"orch_not-a-real-key:").decode()},
        {"Authorization": "Bearer " + "x" * 10_000},
    ],
    ids=["bearer", "x-api-key", "basic", "huge"],
)
def test_bad_key_gets_401(client, headers):
    response = client.get("/bots", headers=headers)

    error = ok(response, 401)["error"]
    assert error["message"] == "The API key is not valid."
    assert "WWW-Authenticate" in response.headers


def test_viewer_may_read_but_a_write_gets_403_json_and_changes_nothing(client, callers):
    viewer = bearer(callers["viewer"])
    before = row_counts()

    assert client.get("/bots", headers=viewer).status_code == 200
    response = client.post("/swarms", json={"name": "v", "count": 1, "tier": "L20"}, headers=viewer)

    error = ok(response, 403)["error"]
    assert error["code"] == "forbidden"
    assert "operator" in error["message"] and "'viewer'" in error["message"]
    assert row_counts() == before


# ---- audit log -------------------------------------------------------------------------------


def test_audit_lists_control_actions_newest_first_for_admins_only(client, callers):
    operator = bearer(callers["operator"])
    swarm = ok(
        client.post(
            "/swarms", json={"name": "audited", "count": 3, "tier": "L20"}, headers=operator
        ),
        201,
    )
    path = f"/swarms/{swarm['id']}"
    ok(client.patch(path, json={"count": 5}, headers=operator), 200)
    ok(client.patch(path, json={"status": "paused"}, headers=operator), 200)
    # Refused writes and reads are not control actions.
    ok(client.post(f"{path}/tasks", json={"type": "echo"}, headers=operator), 409)
    client.get(path, headers=operator)
    ok(client.patch(path, json={"status": "active"}, headers=operator), 200)
    ok(client.post(f"{path}/tasks", json={"type": "echo"}, headers=operator), 202)
    ok(client.delete(path, headers=operator), 200)

    forbidden = ok(client.get("/audit", headers=operator), 403)["error"]
    assert forbidden["code"] == "forbidden"
    page = ok(client.get("/audit", headers=bearer(callers["admin"])), 200)

    entries = [
        (item["key_name"], item["action"], item["method"], item["path"], item["status"])
        for item in page["items"]
    ]
    assert entries == [
        ("operator", "swarms.retire_swarm", "DELETE", path, 200),
        ("operator", "swarms.assign_to_swarm", "POST", f"{path}/tasks", 202),
        ("operator", "swarms.update_swarm", "PATCH", path, 200),
        ("operator", "swarms.update_swarm", "PATCH", path, 200),
        ("operator", "swarms.update_swarm", "PATCH", path, 200),
        ("operator", "swarms.create_swarm", "POST", "/swarms", 201),
    ]
    ids = [item["id"] for item in page["items"]]
    assert ids == sorted(ids, reverse=True)
    assert all(item["tenant"] is None and item["at"] for item in page["items"])
    assert page["next_before"] is None

    older = ok(client.get(f"/audit?limit=2&before={ids[1]}", headers=bearer(callers["admin"])), 200)
    assert [item["id"] for item in older["items"]] == ids[2:4]
    assert older["next_before"] == ids[3]


def test_a_single_assignment_is_audited_once_in_its_own_statement(client, callers):
    headers = bearer(callers["tenant_a"])
    bot = ok(client.post("/bots", json={"name": "a", "tier": "L20"}, headers=headers), 201)
    path = f"/bots/{bot['id']}/tasks"
    ok(client.post(path, json={"type": "echo"}, headers=headers), 202)
    # Refused: not a control action, no entry.
    ok(client.patch(f"/bots/{bot['id']}", json={"status": "paused"}, headers=headers), 200)
    ok(client.post(path, json={"type": "echo"}, headers=headers), 409)

    items = ok(client.get("/audit", headers=bearer(callers["admin"])), 200)["items"]

    assigned = [item for item in items if item["action"] == "bots.assign_task"]
    assert [
        (i["key_name"], i["tenant"], i["method"], i["path"], i["status"]) for i in assigned
    ] == [("tenant-a-ops", "tenant-a", "POST", path, 202)]
    assert [i["action"] for i in items] == [
        "bots.update_bot",
        "bots.assign_task",
        "bots.create_bot",
    ]


def test_audit_names_the_tenant_of_a_tenant_keys_action(client, callers):
    ok(
        client.post(
            "/bots", json={"name": "t", "tier": "L20"}, headers=bearer(callers["tenant_a"])
        ),
        201,
    )

    (item,) = ok(client.get("/audit", headers=bearer(callers["admin"])), 200)["items"]

    assert (item["key_name"], item["tenant"], item["action"]) == (
        "tenant-a-ops",
        "tenant-a",
        "bots.create_bot",
    )

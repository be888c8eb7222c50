"""Hostile input on every write and list endpoint: refused with the documented 4xx, in the JSON
error shape, and nothing in the database changes.

tests/test_api_errors.py holds the first table (POST /swarms and POST /bots); this one walks the
same kinds of input over every endpoint that takes a body or a page, and adds the size, depth and
NUL cases.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from app.extensions import db
from tests.test_api_errors import assert_error

# Every endpoint that reads a JSON body, with a body it accepts. `{bot}`, `{swarm}` and `{task}`
# are filled from the `seeded` fixture.
WRITES = {
    "create-bot": ("POST", "/bots", {"name": "b", "tier": "L20"}),
    "create-swarm": ("POST", "/swarms", {"name": "s", "count": 2, "tier": "L20"}),
    "pause-bot": ("PATCH", "/bots/{bot}", {"status": "paused"}),
    "scale-swarm": ("PATCH", "/swarms/{swarm}", {"count": 4}),
    "assign-bot": ("POST", "/bots/{bot}/tasks", {"type": "echo", "data": {}}),
    "assign-swarm": ("POST", "/swarms/{swarm}/tasks", {"type": "echo", "data": {}}),
    "complete": ("POST", "/bots/{bot}/tasks/{task}/complete", {"result": {"ok": True}}),
    "orchestrate": ("POST", "/orchestrate", {"tasks": [{"type": "echo", "params": {}}]}),
    "update-service": ("PUT", "/services/image", {"timeout_s": 5}),
}
LISTS = ["/bots", "/swarms", "/bots/{bot}/tasks", "/audit"]


def database_state() -> dict[str, str]:
    """A digest of every row of every table: any insert, update or delete changes it."""
    tables = db.session.scalars(
        text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version' ORDER BY tablename"
        )
    ).all()
    state = {
        table: db.session.execute(
            text(
                f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t"
            )
        ).scalar_one()
        for table in tables
    }
    db.session.commit()
    return state


@pytest.fixture()
def seeded(client):
    """A lone bot with a task, a swarm, and the URL of each write, filled in."""
    bot = client.post("/bots", json={"name": "lone", "tier": "standard"}).get_json()
    task = client.post(f"/bots/{bot['id']}/tasks", json={"type": "echo"}).get_json()
    swarm = client.post("/swarms", json={"name": "sw", "count": 3, "tier": "L20"}).get_json()
    assert client.get("/services/image").status_code == 200  # the registry is seeded
    values = {"bot": bot["id"], "swarm": swarm["id"], "task": task["task_id"]}
    return {
        name: (method, path.format(**values), body) for name, (method, path, body) in WRITES.items()
    } | {"lists": [path.format(**values) for path in LISTS]}


def send(client, method: str, path: str, body: object):
    return client.open(path, method=method, json=body)


def test_every_valid_body_in_the_table_is_accepted(client, seeded):
    # The table's bodies are good ones, so each refusal below is about the one thing changed.
    # Pausing last, so the assignments find the bot active.
    for name in sorted(WRITES, key=lambda name: name == "pause-bot"):
        method, path, body = seeded[name]
        response = send(client, method, path, body)
        assert response.status_code < 300, (name, response.get_data(as_text=True))


# ---- depth -----------------------------------------------------------------------------------


def nested(depth: int, leaf: object = 1) -> object:
    """A JSON value `depth` levels deep (alternating objects and lists)."""
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [1000, 100_000], ids=["1000-levels", "100000-levels"])
@pytest.mark.parametrize("name", list(WRITES))
def test_deep_nesting_returns_422_too_deep_never_500(client, seeded, name, depth):
    method, path, body = seeded[name]
    before = database_state()
    # Built as text: 100,000 levels are past what Python's json module can even build.
    document = json.dumps({**body, "deep": "HOLE"}).replace('"HOLE"', "[" * depth + "]" * depth)

    response = client.open(path, method=method, data=document, content_type="application/json")

    error = assert_error(response, 422, "too_deep")
    assert "32 levels" in error["message"]
    assert database_state() == before


def test_nesting_up_to_max_json_depth_is_accepted_and_one_more_is_not(app, client, seeded):
    limit = app.config["SETTINGS"].max_json_depth
    method, path, _ = seeded["assign-bot"]

    # The body is level 1 and `data` level 2, so `data` may hold limit - 2 more levels.
    fits = send(client, method, path, {"type": "echo", "data": {"x": nested(limit - 2)}})
    assert fits.status_code == 202, fits.get_data(as_text=True)
    before = database_state()
    too_deep = send(client, method, path, {"type": "echo", "data": {"x": nested(limit - 1)}})
    assert_error(too_deep, 422, "too_deep")
    assert database_state() == before


# ---- size ------------------------------------------------------------------------------------


def body_of_size(size: int) -> str:
    """A POST /bots body of exactly `size` bytes (the name pads it)."""
    skeleton = json.dumps({"name": "", "tier": "L20"})
    return json.dumps({"name": "x" * (size - len(skeleton)), "tier": "L20"})


def test_body_one_byte_over_max_body_bytes_returns_413_and_at_the_limit_is_read(
    app, client, seeded
):
    limit = app.config["SETTINGS"].max_body_bytes
    before = database_state()
    at_limit, over = body_of_size(limit), body_of_size(limit + 1)
    assert (len(at_limit), len(over)) == (limit, limit + 1)

    response = client.post("/bots", data=over, content_type="application/json")
    assert_error(response, 413, "request_entity_too_large")

    # At the limit the body is read, and the 2 MB name is what is refused.
    response = client.post("/bots", data=at_limit, content_type="application/json")
    assert assert_error(response, 422)["fields"] == {"name": ["Length must be between 1 and 200."]}
    assert database_state() == before


@pytest.mark.parametrize("name", ["update-service", "orchestrate", "assign-swarm"])
def test_a_body_over_max_body_bytes_returns_413_on_every_write(app, client, seeded, name):
    method, path, body = seeded[name]
    limit = app.config["SETTINGS"].max_body_bytes
    before = database_state()
    document = json.dumps({**body, "pad": "x" * limit})

    response = client.open(path, method=method, data=document, content_type="application/json")

    assert_error(response, 413)
    assert database_state() == before


def test_a_one_megabyte_name_under_the_body_limit_returns_422(client, seeded):
    before = database_state()

    for path, body in (
        ("/bots", {"name": "x" * 1_000_000, "tier": "L20"}),
        ("/swarms", {"name": "x" * 1_000_000, "count": 1, "tier": "L20"}),
    ):
        error = assert_error(client.post(path, json=body), 422)
        assert error["fields"] == {"name": ["Length must be between 1 and 200."]}

    assert database_state() == before


HUNDRED_KB = "n" * 100_000


@pytest.mark.parametrize(
    "name, change, fields",
    [
        ("create-bot", {"name": HUNDRED_KB}, {"name"}),
        ("create-bot", {"capabilities": [HUNDRED_KB]}, {"capabilities"}),
        ("create-swarm", {"name": HUNDRED_KB}, {"name"}),
        ("assign-bot", {"type": HUNDRED_KB}, {"type"}),
        ("assign-swarm", {"type": HUNDRED_KB}, {"type"}),
        ("orchestrate", {"tasks": [{"type": "echo", "name": HUNDRED_KB}]}, {"tasks"}),
        ("orchestrate", {"tasks": [{"type": HUNDRED_KB}]}, {"tasks"}),
        ("update-service", {"path": HUNDRED_KB}, {"path"}),
        ("update-service", {"urls": ["http://" + HUNDRED_KB]}, {"urls"}),
    ],
)
def test_100kb_strings_return_422_naming_the_field(client, seeded, name, change, fields):
    method, path, body = seeded[name]
    before = database_state()

    error = assert_error(send(client, method, path, {**body, **change}), 422)

    assert set(error["fields"]) == fields
    assert database_state() == before


# ---- NUL -------------------------------------------------------------------------------------

NUL_CASES = [
    (
        "assign-bot",
        {"data": {"note": "a\x00b"}},
        {"data": {"note": ["Must not contain NUL (\\u0000)."]}},
    ),
    (
        "assign-bot",
        {"data": {"k\x00": 1}},
        {"data": {"k\x00": ["Must not contain NUL (\\u0000)."]}},
    ),
    (
        "assign-swarm",
        {"data": {"list": ["ok", "\x00"]}},
        {"data": {"list": {"1": ["Must not contain NUL (\\u0000)."]}}},
    ),
    ("complete", {"result": "\x00"}, {"result": ["Must not contain NUL (\\u0000)."]}),
    (
        "orchestrate",
        {"tasks": [{"type": "echo", "params": {"p": "\x00"}}]},
        {"tasks": {"0": {"params": {"p": ["Must not contain NUL (\\u0000)."]}}}},
    ),
    ("create-bot", {"name": "a\x00"}, {"name": ["Must not contain NUL (\\u0000)."]}),
    ("pause-bot", {"status": "paused\x00"}, {"status": ["Must not contain NUL (\\u0000)."]}),
    (
        "update-service",
        {"task_types": ["\x00"]},
        {"task_types": {"0": ["Must not contain NUL (\\u0000)."]}},
    ),
]


@pytest.mark.parametrize("name, change, fields", NUL_CASES)
def test_nul_anywhere_in_a_body_returns_422_naming_where(client, seeded, name, change, fields):
    # PostgreSQL stores NUL neither in text nor in jsonb: these were 500s.
    method, path, body = seeded[name]
    before = database_state()

    error = assert_error(send(client, method, path, {**body, **change}), 422, "invalid")

    assert error["fields"] == fields
    assert database_state() == before


NON_FINITE = "Must be a finite number (NaN and Infinity are not JSON)."


@pytest.mark.parametrize(
    "name, document, fields",
    [
        ("assign-bot", '{"type": "echo", "data": {"x": NaN}}', {"data": {"x": [NON_FINITE]}}),
        ("assign-swarm", '{"type": "echo", "data": [Infinity]}', {"data": {"0": [NON_FINITE]}}),
        ("complete", '{"result": -Infinity}', {"result": [NON_FINITE]}),
        ("complete", '{"result": 1e999}', {"result": [NON_FINITE]}),
        (
            "orchestrate",
            '{"tasks": [{"type": "echo", "params": {"p": NaN}}]}',
            {"tasks": {"0": {"params": {"p": [NON_FINITE]}}}},
        ),
        ("update-service", '{"timeout_s": NaN}', {"timeout_s": [NON_FINITE]}),
    ],
)
def test_nan_and_infinity_return_422_naming_where(client, seeded, name, document, fields):
    # Python reads them though JSON has neither, and jsonb refuses them: these were 500s.
    method, path, _ = seeded[name]
    before = database_state()

    response = client.open(path, method=method, data=document, content_type="application/json")

    assert assert_error(response, 422, "invalid")["fields"] == fields
    assert database_state() == before


@pytest.mark.parametrize(
    "query", ["after=%00", "swarm_id=a%00", "capability=%00x", "tier=L20%00", "a%00=1"]
)
def test_nul_in_a_query_string_returns_422(client, seeded, query):
    before = database_state()

    for path in seeded["lists"][:2]:
        error = assert_error(client.get(f"{path}?{query}"), 422, "invalid")
        assert list(error["fields"]) == ["query"]

    assert database_state() == before


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/bots/bot-%00"),
        ("PATCH", "/bots/%00"),
        ("DELETE", "/swarms/swarm-%00"),
        ("GET", "/task/wf-%00"),
        ("POST", "/bots/%00/tasks"),
        ("GET", "/services/%00"),
    ],
)
def test_nul_in_the_path_returns_404(client, seeded, method, path):
    before = database_state()

    assert_error(client.open(path, method=method, json={"status": "paused"}), 404, "not_found")

    assert database_state() == before


# ---- types, unknown fields, content types, malformed bodies ---------------------------------


@pytest.mark.parametrize(
    "count, message",
    [
        pytest.param(2**63, "Must be between 0 and 50000.", id="2**63"),
        pytest.param(10.5, "Not a valid integer.", id="float"),
        pytest.param(True, "Not a valid integer.", id="boolean"),
        pytest.param(None, "Field may not be null.", id="null"),
    ],
)
def test_scaling_a_swarm_with_a_bad_count_returns_422(client, seeded, count, message):
    method, path, _ = seeded["scale-swarm"]
    before = database_state()

    error = assert_error(send(client, method, path, {"count": count}), 422)

    assert error["fields"] == {"count": [message]}
    assert database_state() == before


@pytest.mark.parametrize(
    "name", [name for name in WRITES if name not in ("create-bot", "create-swarm")]
)
def test_unknown_fields_return_422_naming_them(client, seeded, name):
    method, path, body = seeded[name]
    before = database_state()

    error = assert_error(send(client, method, path, {**body, "colour": "red"}), 422)

    assert error["fields"] == {"colour": ["Unknown field."]}
    assert database_state() == before


def test_unknown_field_in_a_workflow_step_returns_422(client, seeded):
    before = database_state()

    error = assert_error(
        client.post("/orchestrate", json={"tasks": [{"type": "echo", "colour": "red"}]}), 422
    )

    assert error["fields"] == {"tasks": {"0": {"colour": ["Unknown field."]}}}
    assert database_state() == before


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
@pytest.mark.parametrize("name", list(WRITES))
def test_non_json_content_types_return_415(client, seeded, name, content_type):
    method, path, body = seeded[name]
    before = database_state()

    response = client.open(path, method=method, data=json.dumps(body), content_type=content_type)

    assert_error(response, 415, "unsupported_media_type")
    assert database_state() == before


@pytest.mark.parametrize(
    "document, status",
    [
        ('{"name": ', 400),
        ("[]", 422),
        ("null", 422),
        ("42", 422),
        ('"text"', 422),
        ('{"a": NaN}', 422),
    ],
    ids=["truncated", "array", "null", "number", "string", "nan"],
)
@pytest.mark.parametrize("name", list(WRITES))
def test_a_body_that_is_not_a_json_object_is_refused(client, seeded, name, document, status):
    method, path, _ = seeded[name]
    before = database_state()

    response = client.open(path, method=method, data=document, content_type="application/json")

    assert_error(response, status)
    assert database_state() == before


# ---- pages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit", ["0", "-1", "1001", str(2**63), "1" + "0" * 40, "1e3", "1.5", "", "ten"]
)
def test_a_bad_limit_returns_422_on_every_list(client, seeded, limit):
    for path in seeded["lists"]:
        error = assert_error(client.get(f"{path}?limit={limit}"), 422)
        assert error["fields"] == {"query": {"limit": error["fields"]["query"]["limit"]}}


def test_the_largest_limit_is_accepted_on_every_list(client, seeded):
    for path in seeded["lists"]:
        response = client.get(f"{path}?limit=1000")
        assert response.status_code == 200, (path, response.get_data(as_text=True))
        assert response.get_json()["limit"] == 1000


@pytest.mark.parametrize("method", ["TRACE", "PUT", "DELETE"])
def test_a_method_a_route_lacks_returns_405_naming_the_allowed_ones(client, method):
    response = client.open("/bots", method=method)

    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST", "HEAD", "OPTIONS"}

"""Errors are raised where they happen and rendered in one place, app/errors.py, with one code
per kind of refusal.

Two views: the source (no other module builds the error JSON, and request hooks raise rather
than answer), and behaviour (every kind of refusal, from the hooks, the schemas and the services,
answers the one shape with its one code).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from app import create_app
from app.config import Settings
from app.errors import HTTP_CODES, error_codes
from app.extensions import db
from app.services import keys
from tests.test_api_errors import assert_error

APP_DIR = Path(__file__).resolve().parent.parent / "app"
ANSWERING_CALLS = {"jsonify", "Response", "make_response"}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _error_envelope(node: ast.AST) -> bool:
    """`{"error": {...}}` or `{"error": something}` handed to an answer: the error JSON shape."""
    return isinstance(node, ast.Dict) and any(
        isinstance(key, ast.Constant) and key.value == "error" for key in node.keys
    )


def error_json_built_outside_errors_module(app_dir: Path) -> list[str]:
    """Every place outside app/errors.py that builds error JSON or answers from a request hook."""
    found = []
    for path in sorted(app_dir.rglob("*.py")):
        if path == app_dir / "errors.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(app_dir.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "app.errors":
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                found += [f"{where}:{node.lineno} imports {name}" for name in private]
            if isinstance(node, ast.Call) and _name(node.func) in ANSWERING_CALLS:
                if any(
                    _error_envelope(arg) for arg in [*node.args, *[k.value for k in node.keywords]]
                ):
                    found.append(f"{where}:{node.lineno} answers with an error body")
            if isinstance(node, ast.Dict) and _error_envelope(node):
                values = [v for k, v in zip(node.keys, node.values, strict=True) if k is not None]
                if any(isinstance(value, ast.Dict) for value in values):
                    found.append(f"{where}:{node.lineno} builds an error envelope")
            if isinstance(node, ast.FunctionDef) and any(
                _name(decorator) == "before_request" for decorator in node.decorator_list
            ):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Return) and isinstance(inner.value, ast.Tuple):
                        found.append(f"{where}:{inner.lineno} a request hook answers (status, …)")
                    if isinstance(inner, ast.Call) and _name(inner.func) in ANSWERING_CALLS - {
                        "Response"
                    }:
                        found.append(f"{where}:{inner.lineno} a request hook builds an answer")
    return found


def test_no_module_but_app_errors_builds_error_json():
    assert error_json_built_outside_errors_module(APP_DIR) == []


def test_the_source_check_finds_what_it_looks_for(tmp_path):
    # The check above must be able to fail: the shapes the old hooks used are caught.
    offender = tmp_path / "app" / "api" / "offender.py"
    offender.parent.mkdir(parents=True)
    offender.write_text(
        "from flask import jsonify\n"
        "from app.errors import _body\n"
        "def register(app):\n"
        "    @app.before_request\n"
        "    def _gate():\n"
        "        return jsonify({'error': {'status': 401, 'code': 'x'}}), 401\n"
    )

    found = error_json_built_outside_errors_module(tmp_path / "app")

    assert [line.split(" ", 1)[1] for line in found] == [
        "imports _body",
        "a request hook answers (status, …)",
        "a request hook builds an answer",
        "answers with an error body",
        "builds an error envelope",
    ], found


# ---- behaviour: one shape, one code per kind ---------------------------------------------------


@pytest.fixture()
def seeded(client):
    bot = client.post("/bots", json={"name": "b", "tier": "L20"}).get_json()
    client.patch(f"/bots/{bot['id']}", json={"status": "paused"})
    return {"bot": bot["id"]}


@pytest.fixture()
def small_app(test_env):
    flask_app = create_app(Settings.from_env({**os.environ, **test_env, "MAX_BOTS": "1"}))
    yield flask_app
    with flask_app.app_context():
        db.engine.dispose()


def nested(depth: int) -> object:
    document: object = 1
    for _ in range(depth):
        document = [document]
    return document


def test_one_code_per_kind_of_refusal(client, anonymous_client, seeded, small_app):
    viewer = {"Authorization": f"Bearer {keys.create_key('v', 'viewer')[1]}"}
    bot = seeded["bot"]
    # (kind, request, status, code): refusals of one kind from different layers share a code.
    cases = [
        ("no key", lambda: anonymous_client.get("/bots"), 401, "unauthorized"),
        (
            "bad key",
            lambda: anonymous_client.get("/bots", headers={"X-API-Key": "x"}),
            401,
            "unauthorized",
        ),
        ("role", lambda: client.post("/bots", json={}, headers=viewer), 403, "forbidden"),
        ("route", lambda: client.get("/nope"), 404, "not_found"),
        ("id", lambda: client.get("/bots/bot-0000000000000000"), 404, "not_found"),
        ("NUL in path", lambda: client.get("/bots/bot-%00"), 404, "not_found"),
        ("method", lambda: client.put("/bots"), 405, "method_not_allowed"),
        (
            "state",
            lambda: client.post(f"/bots/{bot}/tasks", json={"type": "echo"}),
            409,
            "conflict",
        ),
        (
            "JSON",
            lambda: client.post("/bots", data="{", content_type="application/json"),
            400,
            "bad_request",
        ),
        (
            "media",
            lambda: client.post("/bots", data="x", content_type="text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            "schema",
            lambda: client.post("/bots", json={"name": "b", "tier": "gold"}),
            422,
            "invalid",
        ),
        (
            "service",
            lambda: client.post("/orchestrate", json={"tasks": [{"type": "teleport"}]}),
            422,
            "invalid",
        ),
        (
            "NUL value",
            lambda: client.post("/bots", json={"name": "a\x00", "tier": "L20"}),
            422,
            "invalid",
        ),
        ("NUL query", lambda: client.get("/bots?tier=%00"), 422, "invalid"),
        (
            "header",
            lambda: client.post("/bots", json={}, headers={"Idempotency-Key": ""}),
            422,
            "invalid",
        ),
        ("depth", lambda: client.post("/bots", json={"name": nested(40)}), 422, "too_deep"),
    ]
    for kind, call, status, code in cases:
        error = assert_error(call(), status, code)
        assert error_codes()[error["code"]] == status, kind
        if kind == "header":
            assert "Idempotency-Key" in error["message"]

    # MAX_BOTS=1, taken by the seeded (paused, so still live) bot.
    small = small_app.test_client()
    assert_error(small.post("/bots", json={"name": "b", "tier": "L20"}), 409, "over_capacity")


def test_request_hook_refusals_carry_their_headers(client, anonymous_client):
    refused = anonymous_client.get("/bots")
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "GET" in client.post("/bots/stats").headers["Allow"]


def test_the_catalogue_names_each_code_once_with_one_status():
    codes = error_codes()
    assert codes["invalid"] == 422 and codes["rate_limited"] == 429
    assert codes["internal_error"] == 500 and codes["database_unavailable"] == 503
    # The statuses flask, marshmallow and flask-limiter raise map onto the same codes.
    assert HTTP_CODES[422] == "invalid" and HTTP_CODES[404] == "not_found"
    assert "invalid_value" not in codes and "unprocessable_entity" not in codes


def test_the_readme_lists_every_code():
    readme = (APP_DIR.parent / "README.md").read_text()
    assert [code for code in error_codes() if f"`{code}`" not in readme] == []

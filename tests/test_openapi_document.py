"""The OpenAPI document is complete: every operation, present and added later, is held to it.

Every answer of every operation has a schema, every property of an answer has a type (or says
it is free-form), operations have unique ids, every link names an operation and its parameters,
every creation links to the operations that take its id, and the document's constraints are
those the API applies (a task type outside the enum is refused, one inside is accepted).
"""

from __future__ import annotations

import os

import pytest

from app import create_app
from app.api.auth import required_role
from app.config import Settings
from app.services.task_types import BUILT_IN
from app.tiers import TIERS

METHODS = ("get", "put", "post", "delete", "patch")
# Properties whose value is any JSON on purpose; each says so in its description.
FREE_FORM = {
    ("TaskOut", "result"),
    ("TaskDetail", "result"),
    ("StepOut", "result"),
    ("TaskComplete", "result"),
    ("MassActionResult", "result"),
    ("AggregateOut", "result"),
}


@pytest.fixture(scope="module")
def document(test_env):
    # The document of an app with the run's settings (each app serves its own).
    fresh = create_app(Settings.from_env({**os.environ, **test_env}))
    return fresh.test_client().get("/openapi.json").get_json()


def _operations(document):
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def _resolve(document, node):
    while "$ref" in node:
        section, kind, name = node["$ref"].removeprefix("#/").split("/")
        node = document[section][kind][name]
    return node


def test_every_answer_of_every_operation_has_a_json_schema(document):
    missing = []
    for path, method, operation in _operations(document):
        assert operation["responses"], f"{method.upper()} {path} documents no answer"
        for status, response in operation["responses"].items():
            content = _resolve(document, response).get("content", {})
            if "schema" not in content.get("application/json", {}):
                missing.append(f"{method.upper()} {path} {status}")
    assert missing == []


def test_every_property_of_every_answer_has_a_type(document):
    untyped = []
    for name, schema in document["components"]["schemas"].items():
        for prop, definition in schema.get("properties", {}).items():
            typed = any(key in definition for key in ("type", "$ref", "anyOf", "oneOf", "allOf"))
            if not typed and (name, prop) not in FREE_FORM:
                untyped.append(f"{name}.{prop}")
            if not typed and (name, prop) in FREE_FORM:
                assert definition.get("description"), f"{name}.{prop} is free-form: say what it is"
    assert untyped == []


def test_answers_list_every_field_as_required_and_refuse_unknown_ones(document):
    schemas = document["components"]["schemas"]
    for name in ("BotOut", "SwarmOut", "SwarmCreated", "TaskDetail", "WorkflowOut", "BotStats",
                 "Health", "Scaling", "ServiceOut", "TaskTypeOut", "MassAssigned",
                 "MassActionOut", "MassActionCounts", "MassActionResult"):  # fmt: skip
        schema = schemas[name]
        optional = set(schema["properties"]) - set(schema["required"])
        assert optional <= {"failing"}, f"{name}: {optional}"
        assert schema["additionalProperties"] is False, name


def test_operation_ids_are_unique_and_name_the_view(document):
    ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert len(ids) == len(set(ids))
    assert {"create_bot", "bot_stats", "get_task", "orchestrate", "get_health"} <= set(ids)


def test_every_link_names_an_operation_and_its_parameters(document):
    parameters = {
        operation["operationId"]: document["paths"][path].get("parameters", [])
        + operation.get("parameters", [])
        for path, _, operation in _operations(document)
    }
    for path, method, operation in _operations(document):
        for status, response in operation["responses"].items():
            for name, link in _resolve(document, response).get("links", {}).items():
                where = f"{method.upper()} {path} {status} {name}"
                assert link["operationId"] in parameters, where
                target = parameters[link["operationId"]]
                assert set(link["parameters"]) <= {p["name"] for p in target}, where
                in_path = {p["name"] for p in target if p["in"] == "path"}
                assert in_path <= set(link["parameters"]), where


def test_every_creation_links_to_the_operations_that_take_its_id(document):
    for path, method, operation in _operations(document):
        if method != "post":
            continue
        created = {s: r for s, r in operation["responses"].items() if s in ("201", "202")}
        for status, response in created.items():
            links = {link["operationId"] for link in response.get("links", {}).values()}
            assert links, f"POST {path} {status} links to nothing"
    links = document["paths"]["/bots"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in links.values()} >= {"get_bot", "assign_task"}
    links = document["paths"]["/orchestrate"]["post"]["responses"]["202"]["links"]
    assert "get_task" in {link["operationId"] for link in links.values()}


def test_task_or_workflow_answers_are_told_apart_by_kind(document):
    schema = document["paths"]["/task/{task_id}"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]
    assert schema["discriminator"]["propertyName"] == "kind"
    for kind, reference in schema["discriminator"]["mapping"].items():
        variant = _resolve(document, {"$ref": reference})
        assert variant["properties"]["kind"]["enum"] == [kind]
        assert "kind" in variant["required"]


def test_enums_are_the_ones_the_code_knows(document):
    schemas = document["components"]["schemas"]
    assert schemas["TaskAssign"]["properties"]["type"]["enum"] == sorted(BUILT_IN)
    assert schemas["BotOut"]["properties"]["tier"]["enum"] == list(TIERS)
    assert schemas["SwarmCreate"]["properties"]["count"]["maximum"] == 50_000
    assert schemas["SwarmUpdate"]["minProperties"] == 1


def test_every_operation_says_who_may_call_it(document, app):
    endpoints: dict[str, str] = {}
    for rule in app.url_map.iter_rules():  # in registration order, as the ids were given
        endpoints.setdefault(rule.endpoint.rsplit(".", 1)[-1], rule.endpoint)
        endpoints[rule.endpoint.replace(".", "_")] = rule.endpoint
    for path, method, operation in _operations(document):
        role = required_role(endpoints[operation["operationId"]], method.upper())
        if role is None:
            assert operation["security"] == [], path
        else:
            assert operation["x-required-role"] == role, path
            assert {name for scheme in operation["security"] for name in scheme} == {
                "bearer",
                "apiKey",
                "basic",
            }


def test_a_task_type_outside_the_enum_is_refused_and_one_inside_accepted(client):
    bot = client.post("/bots", json={"name": "b", "tier": "Standard"}).get_json()

    refused = client.post(f"/bots/{bot['id']}/tasks", json={"type": "not_a_type"})
    accepted = client.post(f"/bots/{bot['id']}/tasks", json={"type": "echo"})

    assert refused.status_code == 422
    assert accepted.status_code == 202


def test_the_tier_pattern_accepts_what_the_api_accepts(client, document):
    import re

    pattern = document["components"]["schemas"]["BotCreate"]["properties"]["tier"]["pattern"]
    for tier in ("L20", "l20", " Advanced ", "STANDARD", "gold", "", "L2O"):
        answered = client.post("/bots", json={"name": "b", "tier": tier}).status_code
        assert (re.search(pattern, tier) is not None) == (answered == 201), tier


def test_the_aggregate_of_every_merge_rule_is_documented_key_for_key(document):
    from app.api.schemas import AggregateOut
    from app.services import aggregates
    from app.services.aggregates import Finished

    answers = {
        "echo": aggregates.merge(
            "echo",
            [aggregates.fold("echo", [Finished("echo", "failed", None, "echo: broken")])],
        ),
        "image_generation": aggregates.merge(
            "image_generation",
            [
                aggregates.fold(
                    "image_generation",
                    [Finished("image_generation", "completed", {"text": "x"}, None, 12.5)],
                )
            ],
        ),
        "image_generation, untimed": aggregates.merge("image_generation", []),
        "data_processing": aggregates.merge(
            "data_processing",
            [
                aggregates.fold(
                    "data_processing", [Finished("data_processing", "cancelled", None, None)]
                )
            ],
        ),
    }
    documented = document["components"]["schemas"]["AggregateOut"]["properties"]
    latency = document["components"]["schemas"]["LatencyOut"]["properties"]
    for name, answer in answers.items():
        # Dumping keeps only the fields the schema declares: nothing may be lost.
        assert AggregateOut().dump(answer) == answer, name
        assert set(answer) <= set(documented), name
        if answer.get("latency_ms"):
            assert set(answer["latency_ms"]) == set(latency), name
    assert answers["image_generation"]["latency_ms"]["p99"] == 12.5
    assert "result" in answers["data_processing"] and "latency_ms" in answers["image_generation"]

"""What /openapi.json says beyond what flask-smorest derives, kept next to the rules it states.

A field or validator that checks something JSON Schema can say says it through `openapi(settings)`
(app/api/schemas.py), so the document and the check are one piece of code. This plugin collects
those, marks every field of an answer required (answers always carry every field; nullable ones
say so), names every operation after its view function (what links and generated clients refer
to), and states who may call it: the key schemes and the least role (`required_role`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apispec import APISpec, BasePlugin
from apispec.ext.marshmallow import MarshmallowPlugin
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from app.api.auth import required_role
from app.config import Settings

# The three ways a key may be presented (app/api/auth.py:presented_key), any one of them.
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer KEY`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "basic": {"type": "http", "scheme": "basic", "description": "the key as user name"},
}
ANY_KEY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]


class Answer(Schema):
    """A response schema: every field is always present (nullable where the value may be null).

    A field that an answer carries only sometimes says so with `metadata={"optional": True}`.
    """


class DocumentPlugin(BasePlugin):
    """apispec plugin: constraints from fields and validators, required answer fields, ids."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._operation_ids: dict[str, str] = {}

    def init_spec(self, spec: APISpec) -> None:
        super().init_spec(spec)
        marshmallow = next(p for p in spec.plugins if isinstance(p, MarshmallowPlugin))
        assert marshmallow.converter is not None  # made by its init_spec, which ran before this
        settings = self.settings

        def stated_constraints(converter, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
            return field_constraints(field, settings)

        marshmallow.converter.add_attribute_function(stated_constraints)
        for name, scheme in SECURITY_SCHEMES.items():
            spec.components.security_scheme(name, scheme)

    def schema_helper(self, name: str, definition: dict, **kwargs: Any) -> dict | None:
        schema = kwargs.get("schema")
        if schema is None:
            return None
        schema_class = schema if isinstance(schema, type) else type(schema)
        extra: dict[str, Any] = dict(getattr(schema_class, "OPENAPI", {}))
        if issubclass(schema_class, Answer):
            instance = schema() if isinstance(schema, type) else schema
            extra["required"] = [
                field.data_key or field_name
                for field_name, field in instance.fields.items()
                if not field.load_only and not field.metadata.get("optional")
            ]
        return extra or None

    def operation_helper(self, path=None, operations=None, **kwargs: Any) -> None:
        rule = kwargs.get("rule")
        if rule is None or not operations:
            return
        # One view function per endpoint (flask-smorest routes), so its name is a stable id; a
        # name two blueprints share is told apart by the blueprint's.
        operation_id = rule.endpoint.rsplit(".", 1)[-1]
        if self._operation_ids.setdefault(operation_id, rule.endpoint) != rule.endpoint:
            operation_id = rule.endpoint.replace(".", "_")
        for method, operation in operations.items():
            if method not in _HTTP_METHODS:
                continue
            operation.setdefault("operationId", operation_id)
            role = required_role(rule.endpoint, method.upper())
            operation["security"] = [] if role is None else ANY_KEY
            if role is not None:
                operation["x-required-role"] = role


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def field_constraints(field: fields.Field, settings: Settings) -> dict[str, Any]:
    """What the field's own class and validators state about it (see the module docstring)."""
    stated: dict[str, Any] = {}
    if isinstance(field, fields.Constant):
        stated.update(type="string", enum=[field.constant])
    for part in (field, *field.validators):
        openapi = getattr(part, "openapi", None)
        if callable(openapi):
            stated.update(openapi(settings))
    return stated


def link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link: call `operation_id` with these parameters taken from this answer."""
    return {"operationId": operation_id, "description": description, "parameters": parameters}


def links(status: int, **named: dict[str, Any]) -> Callable:
    """Document links from this operation's `status` answer to the operations its ids feed."""
    # The status as an int, the key flask-smorest files its own response documentation under.
    return Blueprint.doc(responses={status: {"links": named}})

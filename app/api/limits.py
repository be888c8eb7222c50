"""Per-key rate limits (flask-limiter on Redis), stricter on the heavy calls.

Over the limit a client gets 429 JSON with Retry-After. Limits are counted per API key (per
address for open endpoints), in the same Redis the workers use, so every gunicorn worker and
every API replica shares them.
"""

from __future__ import annotations

import math
import time

from flask import Flask, g, jsonify, request
from flask_limiter import Limiter, RequestLimit

from app.errors import error_body

# The calls that create thousands of rows at once.
HEAVY_ENDPOINTS = ("swarms.create_swarm", "swarms.assign_to_swarm", "swarms.update_swarm")


def _client_identity() -> str:
    name = getattr(g, "api_key_name", None)
    return f"key:{name}" if name else f"addr:{request.remote_addr}"


def _too_many(limit: RequestLimit):
    retry_after = max(1, math.ceil(limit.reset_at - time.time()))
    body = error_body(
        429, "rate_limited", f"Rate limit exceeded ({limit.limit}); retry in {retry_after} s."
    )
    response = jsonify(body)
    response.status_code = 429
    response.headers["Retry-After"] = str(retry_after)
    return response


def register_limits(app: Flask) -> Limiter:
    """Attach the limiter; its limits come from RATE_LIMIT and RATE_LIMIT_HEAVY."""
    settings = app.config["SETTINGS"]
    limiter = Limiter(
        key_func=_client_identity,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
        default_limits=[settings.rate_limit] if settings.rate_limit else [],
        on_breach=_too_many,
        # Redis down must not take the API down with it: limits lapse, requests go on.
        swallow_errors=True,
        strategy="moving-window",
    )
    limiter.init_app(app)
    if settings.rate_limit_heavy:
        for endpoint in HEAVY_ENDPOINTS:
            view = app.view_functions.get(endpoint)
            if view is not None:
                app.view_functions[endpoint] = limiter.limit(  # type: ignore[assignment]
                    settings.rate_limit_heavy, key_func=_client_identity
                )(view)
    return limiter


def json_depth_exceeds(document: object, limit: int) -> bool:
    """Whether the JSON document nests deeper than `limit` (walked without recursion)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


NUL_MESSAGE = "Must not contain NUL (\\u0000)."
NON_FINITE_MESSAGE = "Must be a finite number (NaN and Infinity are not JSON)."


def unstorable_fields(document: object) -> dict[str, object]:
    """Where the JSON document holds what PostgreSQL cannot store, in marshmallow's shape of field
    messages ({"tasks": {"0": {"params": {"x": [...]}}}}); empty when nothing does.

    NUL (U+0000) fits neither text nor jsonb, and NaN or Infinity (which Python's json module
    reads, though JSON has neither) not jsonb: either would fail deep in a query as a 500.
    """
    fields: dict[str, object] = {}
    stack: list[tuple[object, tuple[str, ...]]] = [(document, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if "\x00" in key:
                    _mark(fields, (*path, key), NUL_MESSAGE)
                else:
                    stack.append((child, (*path, key)))
        elif isinstance(value, list):
            stack.extend((child, (*path, str(index))) for index, child in enumerate(value))
        elif isinstance(value, str) and "\x00" in value:
            _mark(fields, path or ("_body",), NUL_MESSAGE)
        elif isinstance(value, float) and not math.isfinite(value):
            _mark(fields, path or ("_body",), NON_FINITE_MESSAGE)
    return fields


def _mark(fields: dict[str, object], path: tuple[str, ...], message: str) -> None:
    node = fields
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):  # a parent already marked: keep that message
            return
        node = child
    node[path[-1]] = [message]


def register_body_limits(app: Flask) -> None:
    """Refuse with 422 JSON bodies nested deeper than MAX_JSON_DEPTH and values PostgreSQL cannot
    store, in a body or a query string (a path holding NUL is 404); size is MAX_BODY_BYTES."""
    limit = app.config["SETTINGS"].max_json_depth

    @app.before_request
    def _refuse_nul_in_url():
        if "\x00" in request.path:
            return jsonify(error_body(404, "not_found", "No such resource.")), 404
        names = {
            name if "\x00" not in name else "_query"
            for name, value in request.args.items(multi=True)
            if "\x00" in name or "\x00" in value
        }
        if names:
            fields = {"query": {name: [NUL_MESSAGE] for name in sorted(names)}}
            body = error_body(422, "invalid_value", "The request is not valid.", fields=fields)
            return jsonify(body), 422
        return None

    @app.before_request
    def _check_json_body():
        if request.method not in ("POST", "PUT", "PATCH") or not request.is_json:
            return None
        try:
            # Parsed once here and cached on the request; a malformed body is left to the
            # handler's own 400.
            document = request.get_json(silent=True)
        except RecursionError:
            document, too_deep = None, True
        else:
            too_deep = json_depth_exceeds(document, limit)
        if too_deep:
            body = error_body(422, "too_deep", f"JSON nested deeper than {limit} levels.")
            return jsonify(body), 422
        fields = unstorable_fields(document)
        if fields:
            body = error_body(422, "invalid_value", "The request is not valid.", fields=fields)
            return jsonify(body), 422
        return None

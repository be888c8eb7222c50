"""Rate limits per caller (flask-limiter on Redis), JSON nesting and unstorable values.

Every caller (an API key; the client address for calls without one) has one budget for the whole
API, RATE_LIMIT, kept as flask-limiter application limits, and one more for the calls that create
thousands of rows at once, RATE_LIMIT_HEAVY, shared by those routes. Both live in the Redis the
workers use, so every gunicorn worker and every API replica shares them. Every answer says where
the caller stands in X-RateLimit-Limit, -Remaining and -Reset; over a limit the answer is 429
(rendered by app/errors.py) with Retry-After.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, Response, request
from flask_limiter import ApplicationLimit, Limiter, RequestLimit

from app.api.auth import caller_identity
from app.api.limit_storage import SCHEME_PREFIX
from app.errors import Invalid, NotFound, TooDeep

log = logging.getLogger(__name__)

# The calls that create thousands of rows at once.
HEAVY_ENDPOINTS = ("swarms.create_swarm", "swarms.assign_to_swarm", "swarms.update_swarm")
# Two counters per caller and limit, whatever the limit: at 1000 a second the moving window's log
# of one timestamp per call held ~20 KB of Redis per busy caller, the counters 88 bytes, for the
# same time per check (docs/performance.md). Weighting the previous window's count keeps out the
# double burst a fixed window allows across its edge.
STRATEGY = "sliding-window-counter"


def register_limits(app: Flask) -> Limiter:
    """Attach the limiter with the budgets from RATE_LIMIT and RATE_LIMIT_HEAVY."""
    settings = app.config["SETTINGS"]
    limiter = Limiter(
        key_func=caller_identity,
        # limits' Redis storage, taking a call and reading its window in one round trip.
        storage_uri=SCHEME_PREFIX + settings.redis_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
        application_limits=(
            [ApplicationLimit(settings.rate_limit, key_function=caller_identity)]
            if settings.rate_limit
            else []
        ),
        # Redis down must not take the API down with it: limits lapse, requests go on.
        swallow_errors=True,
        strategy=STRATEGY,
        # Written below: the headers describe the budget closest to running out.
        headers_enabled=False,
    )
    limiter.init_app(app)
    if settings.rate_limit_heavy:
        heavy = limiter.shared_limit(settings.rate_limit_heavy, scope="heavy")
        for endpoint in HEAVY_ENDPOINTS:
            view = app.view_functions.get(endpoint)
            if view is not None:
                app.view_functions[endpoint] = heavy(view)  # type: ignore[assignment]

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        try:
            shown = _nearest_to_breach(limiter.current_limits)
        except Exception:  # Redis went away between the check and now: the answer still goes out
            log.warning("could not read the rate-limit window for the headers", exc_info=True)
            return response
        if shown is not None:
            response.headers["X-RateLimit-Limit"] = str(shown.limit.amount)
            response.headers["X-RateLimit-Remaining"] = str(shown.remaining)
            response.headers["X-RateLimit-Reset"] = str(shown.reset_at)
            if response.status_code == 429:
                retry_after = max(1, math.ceil(shown.reset_at - time.time()))
                response.headers["Retry-After"] = str(retry_after)
        return response

    return limiter


def _nearest_to_breach(limits: list[RequestLimit]) -> RequestLimit | None:
    """The limit to report: the one breached, else the one with the fewest calls left (of two
    with none left, the one that resets later), so a client that follows the headers never meets
    a 429 they did not announce."""
    if not limits:
        return None
    breached = [limit for limit in limits if limit.breached]
    if breached:
        return breached[0]
    return min(limits, key=lambda limit: (limit.remaining, -limit.reset_at))


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
    def _refuse_nul_in_url() -> None:
        if "\x00" in request.path:
            raise NotFound("No such resource.")
        names = {
            name if "\x00" not in name else "_query"
            for name, value in request.args.items(multi=True)
            if "\x00" in name or "\x00" in value
        }
        if names:
            fields = {"query": {name: [NUL_MESSAGE] for name in sorted(names)}}
            raise Invalid("The request is not valid.", fields=fields)

    @app.before_request
    def _check_json_body() -> None:
        if request.method not in ("POST", "PUT", "PATCH") or not request.is_json:
            return
        try:
            # Parsed once here and cached on the request; a malformed body is left to the
            # handler's own 400.
            document = request.get_json(silent=True)
        except RecursionError:
            document, too_deep = None, True
        else:
            too_deep = json_depth_exceeds(document, limit)
        if too_deep:
            raise TooDeep(f"JSON nested deeper than {limit} levels.")
        fields = unstorable_fields(document)
        if fields:
            raise Invalid("The request is not valid.", fields=fields)

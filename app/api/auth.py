"""Who may call what: API keys, roles and tenants, checked before every request.

The rule lives in `required_role`: open endpoints need no key, a few are admin-only, reads need
`viewer` and everything else `operator`. Tests walk the whole route table through it.
"""

from __future__ import annotations

import hmac
import logging

from flask import Flask, current_app, g, request

from app.api.metrics import scraper_admitted
from app.errors import Forbidden, Unauthorized
from app.models import ROLES
from app.services import keys

log = logging.getLogger(__name__)

# Health must answer load balancers; the API description and the dashboard's page (which holds
# no data: it fetches /dashboard/data with the key) are public.
OPEN_ENDPOINTS = frozenset(
    {
        "system.get_health",
        "api-docs.openapi_json",
        "api-docs.openapi_swagger_ui",
        "static",
        "dashboard.page",
    }
)
ADMIN_ENDPOINTS = frozenset({"services.update_service", "audit.list_audit"})
# Views of the whole service: a key limited to one tenant may not see them.
GLOBAL_ENDPOINTS = frozenset(
    {"dashboard.data", "scaling.get_scaling", "audit.list_audit", "metrics.scrape"}
)
# Endpoints a caller without an API key may also reach when the endpoint's own check admits it:
# Prometheus scrapers with METRICS_PUBLIC or METRICS_TOKEN (app/api/metrics.py).
KEYLESS_ADMISSION = {"metrics.scrape": scraper_admitted}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ADMIN_KEY_NAME = "admin (ADMIN_API_KEY)"


def required_role(endpoint: str | None, method: str) -> str | None:
    """The least role that may call this endpoint with this method; None means open."""
    if endpoint is None or endpoint in OPEN_ENDPOINTS:
        return None
    if endpoint in ADMIN_ENDPOINTS:
        return "admin"
    return "viewer" if method in READ_METHODS else "operator"


def presented_key() -> str | None:
    """The key the client sent: a bearer token, X-API-Key, or the user name of HTTP Basic auth
    (so `curl -u KEY:` and a netrc entry work, as with other key-based APIs)."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    if request.authorization is not None and request.authorization.type == "basic":
        return request.authorization.username or None
    return request.headers.get("X-API-Key") or None


def caller_identity() -> str:
    """Who is calling, for per-caller state (rate limits, Idempotency-Key answers): the API key,
    or the client address for calls without one."""
    return g.get("caller") or f"addr:{request.remote_addr}"


def register_auth(app: Flask) -> None:
    """Refuse requests without a key (401) or with too small a role (403)."""

    @app.before_request
    def _gate() -> None:
        g.api_key_name = None
        g.tenant = None
        g.caller = None
        role = required_role(request.endpoint, request.method)
        if role is None:
            return
        admitted = KEYLESS_ADMISSION.get(request.endpoint or "")
        if admitted is not None and admitted():
            return
        plaintext = presented_key()
        found = _authenticate(plaintext) if plaintext else None
        anonymous = current_app.config["SETTINGS"].anonymous_role
        if found is None and plaintext is None and anonymous is not None:
            if ROLES.index(anonymous) >= ROLES.index(role):
                return
        if found is None:
            raise Unauthorized(
                "An API key is required." if not plaintext else "The API key is not valid."
            )
        key, g.caller = found
        g.api_key_name, g.tenant = key.name, key.tenant
        if ROLES.index(key.role) < ROLES.index(role):
            raise Forbidden(f"This needs the {role} role; the key {key.name!r} has {key.role}.")
        if key.tenant is not None and request.endpoint in GLOBAL_ENDPOINTS:
            raise Forbidden(
                "This shows the whole service; a key limited to a tenant may not see it."
            )


def _authenticate(plaintext: str) -> tuple[keys.LiveKey, str] | None:
    """The key behind the text, with the caller identity it stands for: ADMIN_API_KEY (checked
    in memory), or a stored key (by id, so a stored key named like the admin key is still
    another caller)."""
    admin_key = current_app.config["SETTINGS"].admin_api_key
    if admin_key and hmac.compare_digest(plaintext.encode(), admin_key.encode()):
        return keys.LiveKey(None, ADMIN_KEY_NAME, "admin", None), "admin"
    key = keys.authenticate(plaintext)
    return None if key is None else (key, f"key:{key.id}")

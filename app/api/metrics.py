"""GET /metrics: the Prometheus exposition (app/services/state_metrics.py), for scrapers.

A plain Flask blueprint, kept out of the OpenAPI document. It is open only when configured:
METRICS_PUBLIC=1 opens it to anyone; otherwise a scraper must send METRICS_TOKEN as a bearer
token; with neither it answers 404, as if it did not exist. API-key authentication leaves this
route to its own check (app/api/auth.py lists it among the open endpoints).
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, abort, current_app, request

from app.services import state_metrics

bp = Blueprint("metrics", __name__)


@bp.route("/metrics")
def scrape() -> Response:
    """Every metric in Prometheus's text format."""
    if not _allowed():
        abort(404)  # the same answer as a route that does not exist
    body, content_type = state_metrics.render()
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def _allowed() -> bool:
    settings = current_app.config["SETTINGS"]
    if settings.metrics_public:
        return True
    if not settings.metrics_token:
        return False
    header = request.headers.get("Authorization", "")
    if header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode(), settings.metrics_token.encode())

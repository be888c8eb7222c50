"""GET /metrics: the Prometheus exposition (app/services/state_metrics.py), for scrapers.

A plain Flask blueprint, kept out of the OpenAPI document. Like the other views of the whole
service it answers a viewer, operator or admin key without a tenant (app/api/auth.py). A
Prometheus scraper without an API key is admitted when METRICS_PUBLIC=1, or when it sends
METRICS_TOKEN as a bearer token.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request

from app.services import state_metrics

bp = Blueprint("metrics", __name__)


@bp.route("/metrics")
def scrape() -> Response:
    """Every metric in Prometheus's text format."""
    body, content_type = state_metrics.render()
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def scraper_admitted() -> bool:
    """Whether this request may read /metrics without an API key (METRICS_PUBLIC, METRICS_TOKEN)."""
    settings = current_app.config["SETTINGS"]
    if settings.metrics_public:
        return True
    if not settings.metrics_token:
        return False
    header = request.headers.get("Authorization", "")
    if header[:7].lower() != "bearer ":
        return False
    return hmac.compare_digest(header[7:].strip().encode(), settings.metrics_token.encode())

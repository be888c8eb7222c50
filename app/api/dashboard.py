"""/dashboard: the swarm dashboard for people, and /dashboard/data, the JSON it polls.

A plain Flask blueprint (not flask-smorest), so neither page appears in the OpenAPI document.
Everything it needs (HTML, CSS, JS) is served by the app: no build step, no CDN.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template

from app.services import dashboard

bp = Blueprint("dashboard", __name__)

# How often the page asks for fresh figures.
POLL_MS = 2000


@bp.route("/dashboard")
def page():
    """The dashboard, rendered with the current figures; its script keeps them fresh."""
    return render_template("dashboard.html", data=dashboard.snapshot(), poll_ms=POLL_MS)


@bp.route("/dashboard/data")
def data():
    """The dashboard's figures as JSON (each call also samples throughput)."""
    response = jsonify(dashboard.snapshot())
    response.headers["Cache-Control"] = "no-store"
    return response

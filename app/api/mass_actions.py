"""/mass-actions/{id}: progress, aggregate, results and cancel of one mass-action."""

from __future__ import annotations

import json

from flask import Response, request, stream_with_context
from flask_smorest import Blueprint

from app.api.schemas import (
    MassActionOut,
    MassActionResult,
    MassActionResultList,
    ResultPage,
)
from app.services import mass_actions, plain_reads
from app.services.ids import task_public_id

blp = Blueprint("mass_actions", __name__, description="Mass-actions: progress, results, cancel")

NDJSON = "application/x-ndjson"


@blp.route("/mass-actions/<mass_action_id>", methods=["GET"])
@blp.response(200, MassActionOut)
def get_mass_action(mass_action_id):
    """Progress (counts per state, percent, rate, ETA) and the aggregate of one mass-action."""
    return Response(plain_reads.mass_action_json(mass_action_id), mimetype="application/json")


@blp.route("/mass-actions/<mass_action_id>/results", methods=["GET"])
@blp.arguments(ResultPage, location="query")
@blp.doc(
    responses={
        "200": {
            "description": "A page of results in task order; with `Accept: application/x-ndjson`"
            " every result after `after` (no `limit`), one JSON object per line",
            "content": {
                "application/json": {"schema": MassActionResultList},
                NDJSON: {"schema": MassActionResult},
            },
        }
    }
)
def get_results(query, mass_action_id):
    """The tasks' results in task order: paged with `after`/`limit`/`status`, or all as NDJSON."""
    after, status = query.get("after"), query.get("status")
    if request.accept_mimetypes.best_match(["application/json", NDJSON]) == NDJSON:
        chunks = mass_actions.stream_results(mass_action_id, after, status)
        response = Response(stream_with_context(chunks), mimetype=NDJSON)
        # Let a proxy pass the lines on as they come instead of buffering the whole export.
        response.headers["X-Accel-Buffering"] = "no"
        return response
    limit = query["limit"]
    lines, next_after = mass_actions.results_page(mass_action_id, after, limit, status)
    # The lines are JSON already: joined, not parsed and dumped again.
    cursor = json.dumps(task_public_id(next_after) if next_after is not None else None)
    body = f'{{"items": [{",".join(lines)}], "limit": {limit}, "next_after": {cursor}}}'
    return Response(body, mimetype="application/json")


@blp.route("/mass-actions/<mass_action_id>", methods=["DELETE"])
@blp.response(200, MassActionOut)
def cancel_mass_action(mass_action_id):
    """Cancel every task not yet started (one statement); running tasks finish."""
    return mass_actions.cancel(mass_action_id)


@blp.route("/mass-actions/<mass_action_id>/cancel", methods=["POST"])
@blp.response(200, MassActionOut)
def cancel_mass_action_by_post(mass_action_id):
    """The same as DELETE /mass-actions/{id}, for clients that cannot send DELETE."""
    return mass_actions.cancel(mass_action_id)

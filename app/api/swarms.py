"""/swarms: many bots as one, and mass-actions across them."""

from __future__ import annotations

import json

from flask import Response
from flask_smorest import Blueprint

from app.api.openapi import link, links
from app.api.schemas import (
    MassActionList,
    MassActionOut,
    MassAssigned,
    Page,
    SwarmCreate,
    SwarmCreated,
    SwarmList,
    SwarmOut,
    SwarmPage,
    SwarmUpdate,
    TaskAssign,
    page_of,
)
from app.services import mass_actions, plain_reads, swarms
from app.services.ids import iso

blp = Blueprint("swarms", __name__, description="Bot swarms and mass-actions")

SWARM_ID = "$response.body#/id"


@blp.route("/swarms", methods=["POST"])
@blp.arguments(SwarmCreate)
@blp.doc(
    responses={
        201: {"description": "Created", "content": {"application/json": {"schema": SwarmCreated}}}
    }
)
@links(
    201,
    GetSwarm=link("get_swarm", "The swarm just created", swarm_id=SWARM_ID),
    UpdateSwarm=link("update_swarm", "Scale, pause or resume it", swarm_id=SWARM_ID),
    RetireSwarm=link("retire_swarm", "Retire it and its bots", swarm_id=SWARM_ID),
    AssignToSwarm=link("assign_to_swarm", "A mass-action over its bots", swarm_id=SWARM_ID),
    GetFirstBot=link("get_bot", "Its first bot", bot_id="$response.body#/bot_ids/0"),
)
def create_swarm(body):
    """Create a swarm of `count` bots; answers every bot id."""
    swarm, bot_ids = swarms.create_swarm(
        body["name"], body["count"], body["tier"], body["capabilities"]
    )
    # Built directly: 50,000 ids through a schema would cost more than creating them.
    document = {
        "id": swarm.id,
        "name": swarm.name,
        "bot_count": len(bot_ids),
        "tier": swarm.tier,
        "capabilities": swarm.capabilities,
        "bot_ids": bot_ids,
        "status": swarm.status,
        "created_at": iso(swarm.created_at),
    }
    return Response(json.dumps(document), status=201, mimetype="application/json")


@blp.route("/swarms", methods=["GET"])
@blp.arguments(SwarmPage, location="query")
@blp.alt_response(200, schema=SwarmList, description="A page of swarms", success=True)
def list_swarms(query):
    """List swarms; paginate with `after`."""
    items = swarms.list_swarms(query["limit"], query.get("after"), query.get("status"))
    return page_of(items, SwarmOut(), query["limit"], lambda view: view.swarm.id)


@blp.route("/swarms/<swarm_id>", methods=["GET"])
@blp.response(200, SwarmOut)
def get_swarm(swarm_id):
    """A swarm's size, live bots and task totals."""
    return Response(plain_reads.swarm_json(swarm_id), mimetype="application/json")


@blp.route("/swarms/<swarm_id>", methods=["PATCH"])
@blp.arguments(SwarmUpdate)
@blp.response(200, SwarmOut)
def update_swarm(body, swarm_id):
    """Scale a swarm to `count` bots, and/or pause or resume it."""
    return swarms.update_swarm(swarm_id, body.get("count"), body.get("status"))


@blp.route("/swarms/<swarm_id>", methods=["DELETE"])
@blp.response(200, SwarmOut)
def retire_swarm(swarm_id):
    """Retire a swarm and all its bots; waiting tasks are cancelled."""
    return swarms.retire_swarm(swarm_id)


@blp.route("/swarms/<swarm_id>/tasks", methods=["POST"])
@blp.arguments(TaskAssign)
@blp.response(
    202,
    MassAssigned,
    headers={
        "Location": {
            "description": "the new mass-action: /mass-actions/{mass_action_id}",
            "schema": {"type": "string"},
        }
    },
)
@links(
    202,
    GetSwarm=link("get_swarm", "The swarm's task totals", swarm_id="$response.body#/swarm_id"),
    GetMassAction=link(
        "get_mass_action",
        "The mass-action's progress and aggregate",
        mass_action_id="$response.body#/mass_action_id",
    ),
)
def assign_to_swarm(body, swarm_id):
    """Mass-action: one task for every active bot of the swarm; follow it at `Location`."""
    created = mass_actions.assign_to_swarm(
        swarm_id, body["type"], body["data"], body.get("callback_url")
    )
    return created, 202, {"Location": f"/mass-actions/{created.mass_action_id}"}


@blp.route("/swarms/<swarm_id>/mass-actions", methods=["GET"])
@blp.arguments(Page, location="query")
@blp.alt_response(
    200, schema=MassActionList, description="A page of mass-actions, newest first", success=True
)
def list_mass_actions(query, swarm_id):
    """The swarm's mass-actions, newest first (progress without aggregates); page with `after`."""
    items = mass_actions.list_for_swarm(swarm_id, query["limit"], query.get("after"))
    return page_of(items, MassActionOut(), query["limit"], lambda view: view.mass_action.id)

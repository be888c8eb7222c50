"""/bots: single bots, their statistics and their tasks."""

from __future__ import annotations

import json

from flask import Response
from flask_smorest import Blueprint
from werkzeug.routing import BaseConverter

from app.api.audit import recorded_with_action, request_entry
from app.api.openapi import link, links
from app.api.schemas import (
    BotCreate,
    BotList,
    BotOut,
    BotPage,
    BotStats,
    BotUpdate,
    TaskAssign,
    TaskAssigned,
    TaskComplete,
    TaskList,
    TaskOut,
    TaskPage,
    page_of,
)
from app.errors import NotFound
from app.services import assignments, bots, plain_reads, stats
from app.services.ids import parse_task_id, task_public_id

blp = Blueprint("bots", __name__, description="Bots and their tasks")


class BotIdConverter(BaseConverter):
    """A bot id in a path: any segment but `stats`, so that /bots/stats is one resource and
    answers one `Allow` (GET) instead of also offering the PATCH and DELETE of /bots/{bot_id}."""

    regex = r"(?!stats$)[^/]+"


CONVERTERS = {"bot": BotIdConverter}

BOT_ID = "$response.body#/id"


def json_answer(document: str) -> Response:
    """A 200 with JSON the service wrote itself (the route's schema documents it)."""
    return Response(document, mimetype="application/json")


@blp.route("/bots", methods=["POST"])
@blp.arguments(BotCreate)
@blp.response(201, BotOut)
@links(
    201,
    GetBot=link("get_bot", "The bot just created", bot_id=BOT_ID),
    UpdateBot=link("update_bot", "Pause or resume it", bot_id=BOT_ID),
    RetireBot=link("retire_bot", "Retire it", bot_id=BOT_ID),
    AssignTask=link("assign_task", "Give it a task", bot_id=BOT_ID),
    ListTasks=link("list_tasks", "Its tasks", bot_id=BOT_ID),
)
def create_bot(body):
    """Create one bot."""
    return bots.create_bot(body["name"], body["tier"], body["capabilities"])


@blp.route("/bots", methods=["GET"])
@blp.arguments(BotPage, location="query")
@blp.alt_response(200, schema=BotList, description="A page of bots", success=True)
def list_bots(query):
    """List bots, filtered by tier, status, swarm or capability; paginate with `after`."""
    filters = bots.BotFilter(
        tier=query.get("tier"),
        status=query.get("status"),
        swarm_id=query.get("swarm_id"),
        capability=query.get("capability"),
    )
    items = bots.list_bots(filters, query["limit"], query.get("after"))
    return page_of(items, BotOut(), query["limit"], lambda bot: bot.id)


@blp.route("/bots/stats")
@blp.response(200, BotStats, description="Totals, tiers, capacity and utilisation")
def bot_stats():
    """Service-wide bot and task statistics."""
    return json_answer(json.dumps(stats.bot_stats()))


@blp.route("/bots/<bot:bot_id>", methods=["GET"])
@blp.response(200, BotOut)
def get_bot(bot_id):
    """One bot with its task counters."""
    return json_answer(plain_reads.bot_json(bot_id))


@blp.route("/bots/<bot:bot_id>", methods=["PATCH"])
@blp.arguments(BotUpdate)
@blp.response(200, BotOut)
def update_bot(body, bot_id):
    """Pause or resume a bot."""
    return bots.set_bot_status(bot_id, body["status"])


@blp.route("/bots/<bot:bot_id>", methods=["DELETE"])
@blp.response(200, BotOut)
def retire_bot(bot_id):
    """Retire a bot; its waiting tasks are cancelled."""
    return bots.retire_bot(bot_id)


@blp.route("/bots/<bot:bot_id>/tasks", methods=["POST"])
@blp.arguments(TaskAssign)
@blp.response(202, TaskAssigned)
@links(
    202,
    GetTask=link("get_task", "The task's status and result", task_id="$response.body#/task_id"),
    CompleteTask=link(
        "complete_task",
        "Mark it completed",
        bot_id="$response.body#/bot_id",
        task_id="$response.body#/task_id",
    ),
    CancelTask=link("cancel_task", "Cancel it", task_id="$response.body#/task_id"),
)
def assign_task(body, bot_id):
    """Give a task to a bot; it runs on the worker pool."""
    entry = request_entry(assignments.ASSIGNED_STATUS)
    assigned = assignments.assign_to_bot(bot_id, body["type"], body["data"], audit_entry=entry)
    recorded_with_action()
    return assigned


@blp.route("/bots/<bot:bot_id>/tasks", methods=["GET"])
@blp.arguments(TaskPage, location="query")
@blp.alt_response(200, schema=TaskList, description="A page of the bot's tasks", success=True)
def list_tasks(query, bot_id):
    """A bot's tasks, newest first; paginate with `after`."""
    after = query.get("after")
    after_id = parse_task_id(after) if after else None
    if after and after_id is None:
        raise NotFound(f"No task {after!r}.")
    items = assignments.list_bot_tasks(bot_id, query["limit"], after_id, query.get("status"))
    return page_of(items, TaskOut(), query["limit"], lambda task: task_public_id(task.id))


@blp.route("/bots/<bot:bot_id>/tasks/<task_id>/complete", methods=["POST"])
@blp.arguments(TaskComplete)
@blp.response(200, TaskOut)
def complete_task(body, bot_id, task_id):
    """Mark a task completed; repeating it changes nothing."""
    row_id = parse_task_id(task_id)
    if row_id is None:
        raise NotFound(f"Task {task_id!r} of bot {bot_id!r} not found.")
    return assignments.complete_task(bot_id, row_id, body.get("result"))

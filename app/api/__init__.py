"""HTTP handlers: parse and validate, call one service, dump. The route table lives here."""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api


def register_blueprints(app: Flask, api: Api) -> None:
    """Attach every resource's blueprint (and the path converters their routes use)."""
    from app.api import (
        audit,
        bots,
        mass_actions,
        scaling,
        services,
        swarms,
        system,
        tasks,
        workflows,
    )

    app.url_map.converters.update(bots.CONVERTERS)
    for module in (system, bots, swarms, mass_actions, tasks, workflows, services, scaling, audit):
        api.register_blueprint(module.blp)

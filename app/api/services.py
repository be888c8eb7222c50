"""/services: the downstream AI services, their URLs' health, and changes at runtime."""

from __future__ import annotations

from flask_smorest import Blueprint

from app.api.openapi import link, links
from app.api.schemas import ServiceList, ServiceOut, ServiceUpdate
from app.services import registry

blp = Blueprint("services", __name__, description="Service discovery for the AI services")


@blp.route("/services", methods=["GET"])
@blp.response(200, ServiceList, description="Every service")
@links(
    200,
    GetService=link("get_service", "The first service", name="$response.body#/items/0/name"),
    UpdateService=link("update_service", "Change it", name="$response.body#/items/0/name"),
)
def list_services():
    """Every service: URLs in failover order, each URL's last probe and circuit breaker."""
    return {"items": registry.list_services()}


@blp.route("/services/<name>", methods=["GET"])
@blp.response(200, ServiceOut)
def get_service(name):
    """One service, as in the list."""
    return registry.get_service(name)


@blp.route("/services/<name>", methods=["PUT"])
@blp.arguments(ServiceUpdate)
@blp.response(200, ServiceOut)
def update_service(body, name):
    """Change a service's URLs, path, health path, timeout, task types or concurrency limit."""
    return registry.update_service(name, **body)

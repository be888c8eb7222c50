"""/scaling: the worker count a KEDA or HPA rule should scale the pool to."""

from __future__ import annotations

from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate, validates_schema
from marshmallow.exceptions import ValidationError

from app.api.schemas import Scaling
from app.services import scaling

blp = Blueprint("scaling", __name__, description="Autoscaling signal for the worker pool")


class ScalingQuery(Schema):
    """Optional overrides of the policy; the defaults are in app/services/scaling.py."""

    target_drain_s = fields.Float(
        load_default=scaling.DEFAULT_TARGET_DRAIN_SECONDS,
        validate=validate.Range(min=1, max=86_400),
    )
    min_workers = fields.Integer(
        load_default=scaling.DEFAULT_MIN_WORKERS, validate=validate.Range(min=0, max=10_000)
    )
    max_workers = fields.Integer(
        load_default=scaling.DEFAULT_MAX_WORKERS, validate=validate.Range(min=1, max=10_000)
    )
    per_worker_rate = fields.Float(validate=validate.Range(min=0.001, max=1_000_000))
    current_workers = fields.Integer(validate=validate.Range(min=0, max=10_000))

    @validates_schema
    def _bounds_in_order(self, data, **kwargs) -> None:
        if data["min_workers"] > data["max_workers"]:
            raise ValidationError("Must not exceed max_workers.", "min_workers")


@blp.route("/scaling", methods=["GET"])
@blp.arguments(ScalingQuery, location="query")
@blp.doc(summary="Recommended workers per tier and in all, from backlog, waits and throughput")
@blp.response(200, Scaling, description="Recommended workers per tier and for the pool")
def get_scaling(query):
    policy = scaling.Policy(
        target_drain_seconds=query["target_drain_s"],
        min_workers=query["min_workers"],
        max_workers=query["max_workers"],
    )
    return scaling.report(policy, query.get("per_worker_rate"), query.get("current_workers"))

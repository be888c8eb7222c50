"""The AI services' defaults: which service each downstream task type calls, and where.

A leaf: the task-type catalogue (task_types.py) and the service registry (registry.py) both read
it, so the catalogue can depend on the registry without the registry depending back on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import SERVICE_URL_VARIABLES


@dataclass(frozen=True)
class DownstreamService:
    """The default service of an AI task type: its *_SERVICE_URL variable and request path.

    These defaults seed the service registry (app/services/registry.py); at runtime the
    registry decides which service, URLs and path serve a type.
    """

    name: str
    variable: str
    path: str


DOWNSTREAM: dict[str, DownstreamService] = {
    "image_generation": DownstreamService("image", "IMAGE_SERVICE_URL", "/generate"),
    "video_generation": DownstreamService("video", "VIDEO_SERVICE_URL", "/generate"),
    "crypto_prediction": DownstreamService("crypto", "CRYPTO_SERVICE_URL", "/predict"),
    "fraud_detection": DownstreamService("fraud", "FRAUD_SERVICE_URL", "/detect"),
    "compression": DownstreamService("compression", "COMPRESSION_SERVICE_URL", "/compress"),
    "marketing_analysis": DownstreamService("marketing", "MARKETING_SERVICE_URL", "/analyze"),
}
assert {s.variable for s in DOWNSTREAM.values()} == set(SERVICE_URL_VARIABLES)

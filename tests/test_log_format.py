"""One log format: gunicorn's own lines are JSON like the app's, and each request is logged once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import requests

from tests.workers import gunicorn_serving


@pytest.mark.slow
def test_gunicorn_writes_only_json_lines_and_one_line_per_request(
    migrated_app, test_env, tmp_path: Path
):
    log = tmp_path / "gunicorn.log"
    request_ids = [uuid.uuid4().hex for _ in range(3)]
    env = {**test_env, "LOG_FORMAT": "json", "WEB_CONCURRENCY": "2"}
    with gunicorn_serving(env, log) as url:
        for request_id in request_ids:
            answer = requests.get(f"{url}/health", headers={"X-Request-ID": request_id}, timeout=10)
            assert answer.status_code == 200
    # The server has stopped: its shutdown lines are written too.

    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    assert all({"ts", "level", "logger", "message"} <= set(record) for record in records)

    gunicorn = [r["message"] for r in records if r["logger"] == "gunicorn.error"]
    for said in ("Starting gunicorn", "Listening at", "Booting worker", "Shutting down"):
        assert any(said in message for message in gunicorn), (said, gunicorn)

    for request_id in request_ids:
        mentioning = [line for line in lines if request_id in line]
        assert len(mentioning) == 1, mentioning  # the app's line; no access-log copy
        (record,) = [r for r in records if r.get("request_id") == request_id]
        assert record["event"] == "request" and record["path"] == "/health"
        assert record["status"] == 200

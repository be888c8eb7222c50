"""deploy/nginx.conf in front of a real gunicorn: proxying, the client's address in the app's JSON
request log, the body limit, gzip, and one request id from nginx to the worker's chunk log."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from app.config import Settings
from deploy import system_tools
from deploy.devstack import free_port
from tests.conftest import ADMIN_KEY
from tests.workers import gunicorn_serving, stop_process_group, wait_until_serving

pytestmark = pytest.mark.slow  # gunicorn, nginx and a worker

ROOT = Path(__file__).resolve().parent.parent
LIMIT = Settings.from_env({}).max_body_bytes
# The test's client connects from this loopback address, so the address nginx saw can be told
# apart from nginx's own (127.0.0.1) and from a forged X-Forwarded-For.
CLIENT_ADDRESS = "127.0.0.5"
FORGED = "203.0.113.7"


def _nginx() -> str:
    found = system_tools.find(system_tools.NGINX)
    if not found:
        pytest.fail("nginx is not installed: `make test` installs it (deploy/system_tools.py)")
    return found


@pytest.fixture(scope="module")
def gunicorn(migrated_app, test_env, tmp_path_factory):
    """`gunicorn -c gunicorn.conf.py wsgi:app` as deployed behind nginx; yields (url, log path)."""
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = {
        **test_env,
        "WEB_CONCURRENCY": "1",
        "PROXY_HOPS": "1",
        "LOG_FORMAT": "json",
        "MAX_BODY_BYTES": str(LIMIT),
    }
    with gunicorn_serving(env, log) as url:
        yield url, log


@pytest.fixture(scope="module")
def nginx(gunicorn, tmp_path_factory):
    """nginx running the rendered template in front of gunicorn; yields its port."""
    upstream = gunicorn[0].removeprefix("http://")
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    template = (ROOT / "deploy" / "nginx.conf").read_text()
    rendered = (
        template.replace("${API_UPSTREAM}", upstream)
        .replace("${MAX_BODY}", str(LIMIT))
        .replace("${FLOWER_UPSTREAM}", "127.0.0.1:9")
    )
    unrendered = re.findall(r"^[^#\n]*(\$\{\w+\})", rendered, re.M)
    assert not unrendered, f"the template names variables this test does not render: {unrendered}"
    assert rendered.count("listen 80;") == 1
    (prefix / "default.conf").write_text(
        rendered.replace("listen 80;", f"listen 127.0.0.1:{port};")
    )
    temp_paths = (
        "\n".join(
            f"    {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
        )
        + f"\n    uwsgi_temp_path {prefix}/uwsgi;\n    scgi_temp_path {prefix}/scgi;"
    )
    # What the official image's /etc/nginx/nginx.conf does around conf.d/default.conf.
    (prefix / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\nerror_log {prefix}/error.log info;\n"
        + "events { worker_connections 256; }\n"
        + f"http {{\n{temp_paths}\n    include {prefix}/default.conf;\n}}\n"
    )
    log = prefix / "nginx.out"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [
                _nginx(),
                "-p",
                str(prefix),
                "-e",
                str(prefix / "error.log"),
                "-c",
                str(prefix / "nginx.conf"),
                "-g",
                f"daemon off; pid {prefix}/nginx.pid;",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/health", process, log)
        yield port
    finally:
        stop_process_group(process, signal.SIGQUIT)


def _request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    """One request to nginx from CLIENT_ADDRESS; returns (status, headers, body)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=30, source_address=(CLIENT_ADDRESS, 0)
    )
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", **(headers or {})}
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _log_line(log: Path, seconds: float = 10, **wanted) -> dict:
    """The first JSON log line holding every wanted key=value (waits for it to be written)."""
    deadline = time.monotonic() + seconds
    while True:
        for line in log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if all(record.get(key) == value for key, value in wanted.items()):
                return record
        if time.monotonic() > deadline:
            pytest.fail(f"no log line with {wanted} in {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def test_request_through_nginx_is_logged_with_the_address_nginx_saw(nginx, gunicorn):
    status, headers, body = _request(nginx, "GET", "/health", headers={"X-Forwarded-For": FORGED})
    assert status == 200 and json.loads(body)["status"] == "healthy"
    request_id = headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), "nginx makes the id when the client has none"

    record = _log_line(gunicorn[1], event="request", request_id=request_id)
    # nginx sends "203.0.113.7, 127.0.0.5": the client's claim, then the peer nginx really saw.
    # With PROXY_HOPS=1 the app trusts only that last entry: the forged one never gets logged,
    # and nginx's own address (127.0.0.1, the socket peer gunicorn sees) is not logged either.
    assert record["remote_addr"] == CLIENT_ADDRESS
    assert record["method"] == "GET" and record["route"] == "/health"
    assert record["status"] == 200 and isinstance(record["duration_ms"], float)
    assert record["key_name"] is None and record["level"] == "INFO"


def test_a_request_id_sent_by_the_client_is_kept_end_to_end(nginx, gunicorn):
    status, headers, _ = _request(nginx, "GET", "/task-types", headers={"X-Request-ID": "trace-1"})
    assert status == 200 and headers["X-Request-ID"] == "trace-1"
    assert _log_line(gunicorn[1], request_id="trace-1")["route"] == "/task-types"


def test_nginx_refuses_a_body_over_the_app_limit_and_passes_one_at_it(nginx, gunicorn):
    json_headers = {"Content-Type": "application/json"}
    padding = LIMIT - len(b'{"pad":""}')
    at_limit = b'{"pad":"' + b"x" * padding + b'"}'
    assert len(at_limit) == LIMIT

    status, headers, body = _request(nginx, "POST", "/swarms", b"x" * (LIMIT + 1), json_headers)
    assert status == 413
    assert headers["Server"].startswith("nginx") and b"<html>" in body, "refused by nginx itself"

    status, headers, body = _request(nginx, "POST", "/swarms", at_limit, json_headers)
    assert status == 422 and json.loads(body)["error"]["status"] == 422, "the app judged it"


def test_nginx_gzips_large_json_only(nginx):
    status, headers, body = _request(
        nginx, "GET", "/openapi.json", headers={"Accept-Encoding": "gzip"}
    )
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert "paths" in json.loads(gzip.decompress(body))
    status, headers, _ = _request(nginx, "GET", "/health", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and "Content-Encoding" not in headers, "small answers stay plain"


def test_the_request_id_reaches_the_worker_that_runs_the_chunks(nginx, gunicorn, worker):
    json_headers = {"Content-Type": "application/json"}
    create = json.dumps({"name": "traced", "count": 5, "tier": "L20", "capabilities": []})
    status, _, body = _request(nginx, "POST", "/swarms", create.encode(), json_headers)
    assert status == 201
    swarm_id = json.loads(body)["id"]
    action = json.dumps({"type": "echo", "data": {}}).encode()
    status, headers, _ = _request(nginx, "POST", f"/swarms/{swarm_id}/tasks", action, json_headers)
    assert status == 202
    request_id = headers["X-Request-ID"]

    logged = _log_line(gunicorn[1], event="request", request_id=request_id)
    assert logged["route"] == "/swarms/<swarm_id>/tasks" and logged["status"] == 202
    chunk = _log_line(worker.log_path, seconds=20, event="chunk", request_id=request_id)
    assert chunk["task_count"] == 5 and chunk["outcome"] == "recorded"
    assert isinstance(chunk["duration_ms"], float)


def test_app_replaces_an_unusable_request_id(client):
    assert (
        client.get("/health", headers={"X-Request-ID": "ok-42"}).headers["X-Request-ID"] == "ok-42"
    )
    replaced = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"])

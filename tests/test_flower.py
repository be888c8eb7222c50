"""Flower (`make flower`, the compose `flower` service) sees the pool on the run's broker and keeps
its API behind basic auth."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from deploy.devstack import free_port

pytestmark = pytest.mark.slow  # a worker and Flower

ROOT = Path(__file__).resolve().parent.parent
AUTH = ("ops", "s3cret-flower")


@pytest.fixture()
def flower(test_env, tmp_path):
    """`celery -A workers flower` with basic auth on a free loopback port; yields its URL."""
    port = free_port()
    log = tmp_path / "flower.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "flower",
                f"--port={port}",
                "--address=127.0.0.1",
                f"--basic-auth={AUTH[0]}:{AUTH[1]}",
            ],
            cwd=ROOT,
            env={**os.environ, **test_env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"flower exited:\n{log.read_text()[-3000:]}")
            try:
                requests.get(f"{url}/healthcheck", timeout=5)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    pytest.fail(f"flower did not answer in 30 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _worker_name(worker) -> str:
    args = list(worker.process.args)
    return args[args.index("-n") + 1].replace("%h", socket.gethostname())


def test_flower_lists_our_worker_behind_basic_auth(worker, flower):
    name = _worker_name(worker)

    assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401
    wrong = requests.get(f"{flower}/api/workers", auth=(AUTH[0], "wrong"), timeout=10)
    assert wrong.status_code == 401

    deadline = time.monotonic() + 20
    while True:
        # refresh=true asks the workers over the broker (remote control), now.
        answer = requests.get(f"{flower}/api/workers?refresh=true", auth=AUTH, timeout=15)
        assert answer.status_code == 200, answer.text
        if name in answer.json():
            break
        if time.monotonic() > deadline:
            pytest.fail(f"{name} not in Flower's workers: {sorted(answer.json())}")
        time.sleep(0.5)
    queues = {queue["name"] for queue in answer.json()[name].get("active_queues", [])}
    # The test worker consumes the tier queues and the I/O pool's (tests/workers.py).
    assert queues == {"L20", "advanced", "standard", "io.L20", "io.advanced", "io.standard"}

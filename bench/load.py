"""Read load from a second process: wrk when installed, else a bounded Python generator.

`python -m bench.load URL SECONDS CONNECTIONS [PATH ...]` is the fallback's entry point; it prints
one JSON line with requests/s and latency percentiles, as run_wrk() returns them.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.client import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def generator() -> str:
    """Which load generator run() uses: 'wrk X.Y' or 'python'."""
    if shutil.which("wrk"):
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        match = re.search(r"wrk\s+(\S+)", done.stdout + done.stderr)
        return f"wrk {match.group(1) if match else '?'}"
    return "python (http.client threads)"


def run(
    base_url: str,
    paths: list[str],
    seconds: float,
    connections: int,
    body: dict | None = None,
) -> dict:
    """Load GET paths (a random one per request) for `seconds`, or POST `body` to them when
    given; rps (of all answers), ok_rps (2xx only), p50/p99 in ms, errors (non-2xx and socket
    errors), server_errors (5xx, when the generator tells them apart)."""
    if shutil.which("wrk"):
        return _run_wrk(base_url, paths, seconds, connections, body)
    extra = ["--body", json.dumps(body)] if body is not None else []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load",
            base_url,
            str(seconds),
            str(connections),
            *extra,
            *paths,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


# Counts answers by status class in each wrk thread; done() prints the sum of 5xx.
_COUNT_5XX = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) server_errors = 0 end
function response(status, headers, body)
  if status >= 500 then server_errors = server_errors + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, thread in ipairs(threads) do n = n + thread:get("server_errors") end
  io.write(string.format("server errors: %d\\n", n))
end
"""


def _run_wrk(
    base_url: str, paths: list[str], seconds: float, connections: int, body: dict | None
) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        quoted = ", ".join(json.dumps(p) for p in paths)
        method, payload = ("GET", "nil") if body is None else ("POST", _lua_string(body))
        script.write(
            f"local paths = {{{quoted}}}\n"
            f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"local payload = {payload}\n"
            "request = function()\n"
            f"  return wrk.format('{method}', paths[math.random(#paths)], nil, payload)\n"
            "end\n" + _COUNT_5XX
        )
    try:
        done = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
             "-s", script.name, base_url],
            capture_output=True,
            text=True,
            check=True,
        )  # fmt: skip
    finally:
        Path(script.name).unlink(missing_ok=True)
    out = done.stdout
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", out, re.M))
    errors = 0
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if match:
        errors += int(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if match:
        errors += sum(int(x) for x in match.groups())
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    elapsed = _ms(re.search(r"requests in ([\d.]+\w+),", out).group(1)) / 1000
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "ok_rps": (requests - errors) / elapsed,
        "p50_ms": _ms(percentiles["50"]),
        "p99_ms": _ms(percentiles["99"]),
        "requests": requests,
        "errors": errors,
        "server_errors": int(re.search(r"server errors: (\d+)", out).group(1)),
    }


def _lua_string(body: dict) -> str:
    """The JSON body as a Lua string literal."""
    return "[==[" + json.dumps(body) + "]==]"


def _python_load(
    base_url: str, paths: list[str], seconds: float, connections: int, body: str | None = None
) -> dict:
    parts = urlsplit(base_url)
    latencies: list[float] = []
    errors = [0]
    server_errors = [0]
    lock = threading.Lock()
    headers = {**AUTH, "Content-Type": "application/json"}
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        mine: list[float] = []
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                method = "GET" if body is None else "POST"
                conn.request(method, random.choice(paths), body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status >= 300:
                    errors[0] += 1
                if response.status >= 500:
                    server_errors[0] += 1
                if response.will_close:
                    conn.close()
            except OSError:
                errors[0] += 1
                conn.close()
                continue
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return {
        "rps": len(latencies) / elapsed,
        "ok_rps": (len(latencies) - errors[0]) / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "requests": len(latencies),
        "errors": errors[0],
        "server_errors": server_errors[0],
    }


if __name__ == "__main__":
    url, secs, conns, *targets = sys.argv[1:]
    posted = None
    if targets[:1] == ["--body"]:
        posted, targets = targets[1], targets[2:]
    print(json.dumps(_python_load(url, targets, float(secs), int(conns), posted)))

"""The online path: single assignments beside the plain Flask + Celery version, reads beside a
trivial page, and a mixed minute of both with mass-actions landing in the middle.

Each scenario returns raw samples; `rows()` turns them into the report's lines (medians, goals).
Every accepted task is checked to have run and been counted exactly once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench import load
from bench.report import Row, _goal, median
from bench.scenarios import SWARM_CAPABILITIES, Bench, load_endpoints, say

ASSIGN_CONNECTIONS = 16
READ_CONNECTIONS = 32
ASSIGN_BOTS = 2_000
MIXED_CONNECTIONS = 8
MIXED_MASS_ACTION_BOTS = 20_000
TASK = {"type": "echo", "data": {"x": 1}}
DRAIN_TIMEOUT_S = 120.0


def _swarm(b: Bench, n: int, name: str) -> dict[str, Any]:
    body = {"name": name, "count": n, "tier": "standard", "capabilities": SWARM_CAPABILITIES}
    return b.api.call("POST", "/swarms", body, expect=201)


# One statement, so rows and counters come from one snapshot.
_OURS = """
SELECT count(*), count(*) FILTER (WHERE status IN ('assigned', 'running')),
       count(*) FILTER (WHERE status = 'completed'),
       (SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'tasks_assigned'),
       (SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'tasks_completed')
  FROM tasks
"""
_PLAIN = """
SELECT count(*), count(*) FILTER (WHERE status = 'assigned'),
       count(*) FILTER (WHERE status = 'completed'),
       (SELECT value FROM plain_counters WHERE name = 'tasks_assigned'),
       (SELECT value FROM plain_counters WHERE name = 'tasks_completed')
  FROM plain_tasks
"""
_STATE = ("rows", "open", "completed", "assigned_counter", "completed_counter")


def _ours(b: Bench) -> dict[str, int]:
    """Task rows, open tasks and the totals, as the service's tables hold them."""
    return _state(b, _OURS)


def _plain(b: Bench) -> dict[str, int]:
    return _state(b, _PLAIN)


def _state(b: Bench, sql: str) -> dict[str, int]:
    with b.db.cursor() as cur:
        cur.execute(sql)
        return dict(zip(_STATE, (int(x) for x in cur.fetchone()), strict=True))


def _drain(b: Bench, state) -> float:
    """Seconds until no task of the version is open."""
    started = time.monotonic()
    while state(b)["open"]:
        if time.monotonic() - started > DRAIN_TIMEOUT_S:
            raise TimeoutError("the backlog did not drain")
        time.sleep(0.02)
    return time.monotonic() - started


def _settled(b: Bench, state) -> dict[str, int]:
    """The state once the requests the load generator left unanswered have landed and run:
    nothing open and no new row over half a second."""
    last = state(b)
    while True:
        time.sleep(0.5)
        now = state(b)
        if now == last and not now["open"]:
            return now
        last = now


def _exact(before: dict[str, int], after: dict[str, int], accepted: int) -> dict[str, Any]:
    """Whether every task accepted in between ran and was counted once."""
    new = after["rows"] - before["rows"]
    checks = {
        "new_tasks": new,
        "accepted_by_load": accepted,
        "completed": after["completed"] - before["completed"],
        "assigned_counted": after["assigned_counter"] - before["assigned_counter"],
        "completed_counted": after["completed_counter"] - before["completed_counter"],
    }
    # The load generator may stop with a few requests sent but their answers unread.
    checks["exact"] = (
        new >= accepted
        and checks["completed"] == new
        and checks["assigned_counted"] == new
        and checks["completed_counted"] == new
    )
    return checks


def single_assignments(b: Bench, plain_url: str, seconds: float, label: str) -> dict[str, Any]:
    """POST /bots/{id}/tasks (echo) to random bots of a 2,000-bot swarm at 16 connections, ours
    and the plain version alternately, each drained and checked before the next."""
    swarm = _swarm(b, ASSIGN_BOTS, "bench-assign")
    paths = [f"/bots/{bot_id}/tasks" for bot_id in swarm["bot_ids"]]
    versions = {"ours": (b.stack.base_url, _ours), "plain": (plain_url, _plain)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    for run in range(b.runs):
        for name, (url, state) in versions.items():
            say(f"{label} single assignments, {name}: run {run + 1}/{b.runs}")
            b.wait_idle()
            before = state(b)
            result = load.run(url, paths, seconds, ASSIGN_CONNECTIONS, body=TASK)
            result["drain_seconds"] = _drain(b, state)
            result["check"] = _exact(
                before, _settled(b, state), result["requests"] - result["errors"]
            )
            runs[name].append(result)
    return {"bots": ASSIGN_BOTS, "connections": ASSIGN_CONNECTIONS, "seconds": seconds,
            "runs": runs, "assign_swarm_bot_ids": swarm["bot_ids"]}  # fmt: skip


def reads(b: Bench, swarm: dict[str, Any], seconds: float, label: str) -> dict[str, Any]:
    """The read endpoints at 32 connections beside the trivial page, the stack idle; the
    mass-action read is of a finished 50,000-task mass-action (timed end to end on the way)."""
    started = time.perf_counter()
    mass = b.api.call("POST", f"/swarms/{swarm['id']}/tasks", {"type": "echo"}, expect=202)
    b.api.wait_for(
        f"/mass-actions/{mass['mass_action_id']}",
        lambda doc: doc["status"] in ("completed", "failed", "cancelled"),
        timeout=300,
        interval=0.02,
    )
    mass_seconds = time.perf_counter() - started
    endpoints = {
        "GET /bots/{id}": [f"/bots/{bot_id}" for bot_id in swarm["bot_ids"][:1000]],
        "GET /swarms/{id}": [f"/swarms/{swarm['id']}"],
        "GET /bots/stats": ["/bots/stats"],
        "GET /mass-actions/{id}": [f"/mass-actions/{mass['mass_action_id']}"],
        "GET /docs (trivial)": ["/docs"],
    }
    results = load_endpoints(b, endpoints, seconds, READ_CONNECTIONS, f"{label} reads")
    return {"bots": len(swarm["bot_ids"]), "connections": READ_CONNECTIONS, "seconds": seconds,
            "endpoints": results, "mass_action_50k_seconds": mass_seconds}  # fmt: skip


def mixed_minute(
    b: Bench, assign_bot_ids: list[str], read_swarm: dict[str, Any], seconds: float, label: str
) -> dict[str, Any]:
    """Assignments on 8 connections and reads on 8 more for `seconds`; two 20,000-task
    mass-actions land at a third and at half of it."""
    big = _swarm(b, MIXED_MASS_ACTION_BOTS, "bench-mixed")
    assign_paths = [f"/bots/{bot_id}/tasks" for bot_id in assign_bot_ids]
    read_paths = [f"/bots/{bot_id}" for bot_id in read_swarm["bot_ids"][:1000]] + [
        f"/swarms/{read_swarm['id']}",
        "/bots/stats",
    ]
    runs = []
    for run in range(b.runs):
        say(f"{label} mixed minute: run {run + 1}/{b.runs}")
        b.wait_idle()
        before = _ours(b)
        out: dict[str, Any] = {}

        threads = [
            threading.Thread(target=_drive, args=(b, out, "assign", assign_paths, seconds, TASK)),
            threading.Thread(target=_drive, args=(b, out, "read", read_paths, seconds, None)),
        ]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        mass_ids = []
        for at in (seconds / 3, seconds / 2):
            time.sleep(max(0.0, began + at - time.monotonic()))
            mass_ids.append(
                b.api.call("POST", f"/swarms/{big['id']}/tasks", {"type": "echo"}, expect=202)[
                    "mass_action_id"
                ]
            )
        for thread in threads:
            thread.join()
        drain = _drain(b, _ours)
        accepted = out["assign"]["requests"] - out["assign"]["errors"]
        check = _exact(
            before, _settled(b, _ours), accepted + len(mass_ids) * MIXED_MASS_ACTION_BOTS
        )
        with b.db.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM mass_actions WHERE id = ANY(%s) AND completed = total",
                (mass_ids,),
            )
            check["mass_actions_completed"] = cur.fetchone()[0]
        check["exact"] = check["exact"] and check["mass_actions_completed"] == len(mass_ids)
        runs.append({"assign": out["assign"], "read": out["read"], "drain_seconds": drain,
                     "check": check})  # fmt: skip
    return {"seconds": seconds, "connections": MIXED_CONNECTIONS, "runs": runs}


def _drive(
    b: Bench, out: dict[str, Any], name: str, paths: list[str], seconds: float, body: dict | None
) -> None:
    out[name] = load.run(b.stack.base_url, paths, seconds, MIXED_CONNECTIONS, body=body)


def rows(online: dict[str, Any]) -> list[Row]:
    """The online lines of the report, with the goals of the online path."""
    out: list[Row] = []
    single = online.get("single")
    if single:
        ours, plain = single["runs"]["ours"], single["runs"]["plain"]
        n = f"{single['connections']} conns"
        ours_rps = median([r["ok_rps"] for r in ours])
        plain_rps = median([r["ok_rps"] for r in plain])
        out.append(Row("POST /bots/{id}/tasks: accepted/s", n, ours_rps, "req/s"))
        out.append(Row("Plain Flask + Celery: accepted/s", n, plain_rps, "req/s"))
        out.append(Row("Ours ÷ plain (accepted/s)", n, ours_rps / plain_rps, "x", "≥ 1.2×",
                       _goal(ours_rps / plain_rps, 1.2, False, True)))  # fmt: skip
        for name, runs in (("POST /bots/{id}/tasks", ours), ("Plain Flask + Celery", plain)):
            out.append(Row(f"{name}: p50", n, median([r["p50_ms"] for r in runs]), "ms"))
            p99 = median([r["p99_ms"] for r in runs])
            mine = name.startswith("POST")
            out.append(Row(f"{name}: p99", n, p99, "ms", "≤ 50 ms" if mine else "—",
                           _goal(p99, 50, True, mine)))  # fmt: skip
        exact = all(r["check"]["exact"] for r in ours)
        out.append(Row("Every accepted task executed and counted once", n,
                       float(exact), "yes=1", "1", exact))  # fmt: skip
    rd = online.get("reads")
    if rd:
        trivial = median([r["rps"] for r in rd["endpoints"]["GET /docs (trivial)"]])
        n = f"{rd['bots']:,} bots, {rd['connections']} conns"
        for name, runs in rd["endpoints"].items():
            rps = median([r["rps"] for r in runs])
            is_trivial = "trivial" in name
            limit = 25 if "mass-actions" in name else 20
            out.append(Row(f"{name}: throughput", n, rps, "req/s"))
            out.append(Row(f"{name}: p50", n, median([r["p50_ms"] for r in runs]), "ms"))
            p99 = median([r["p99_ms"] for r in runs])
            out.append(Row(f"{name}: p99", n, p99, "ms", "—" if is_trivial else f"≤ {limit} ms",
                           None if is_trivial else _goal(p99, limit, True, True)))  # fmt: skip
            if not is_trivial:
                out.append(Row(f"{name}: throughput ÷ trivial page's", n, rps / trivial, "x",
                               "≥ 0.6", _goal(rps / trivial, 0.6, False, True)))  # fmt: skip
        out.append(Row("Mass-action (echo) end to end, on the way", "50,000",
                       rd["mass_action_50k_seconds"], "s", "≤ 2.0 s",
                       _goal(rd["mass_action_50k_seconds"], 2.0, True, True)))  # fmt: skip
    mixed = online.get("mixed")
    if mixed:
        n = f"{mixed['seconds']:.0f} s, {mixed['connections']}+{mixed['connections']} conns"
        for part, label in (("assign", "assignments"), ("read", "reads")):
            runs = [r[part] for r in mixed["runs"]]
            rps = median([r["ok_rps"] for r in runs])
            out.append(Row(f"Mixed minute: {label}/s", n, rps, "req/s", "≥ 400",
                           _goal(rps, 400, False, True)))  # fmt: skip
            out.append(Row(f"Mixed minute: {label} p50", n,
                           median([r["p50_ms"] for r in runs]), "ms"))  # fmt: skip
            p99 = median([r["p99_ms"] for r in runs])
            out.append(Row(f"Mixed minute: {label} p99", n, p99, "ms", "≤ 100 ms",
                           _goal(p99, 100, True, True)))  # fmt: skip
            errors = max(r["server_errors"] for r in runs)
            out.append(Row(f"Mixed minute: {label} 5xx (worst run)", n, errors, "",
                           "0", errors == 0))  # fmt: skip
        drain = max(r["drain_seconds"] for r in mixed["runs"])
        out.append(Row("Mixed minute: backlog drained after the end (worst run)", n, drain, "s",
                       "≤ 10 s", _goal(drain, 10, True, True)))  # fmt: skip
        exact = all(r["check"]["exact"] for r in mixed["runs"])
        out.append(Row("Mixed minute: every accepted task counted once", n, float(exact),
                       "yes=1", "1", exact))  # fmt: skip
    return out


SECTION_BEGIN = "<!-- online path: written by `python -m bench` (bench/online.py) -->"
SECTION_END = "<!-- end of the online path -->"


def write_section(online: dict[str, Any], machine: dict[str, Any], finished_at: str) -> None:
    """The online path's table in docs/performance.md, among the hand-written notes (kept by
    every full run), replaced by each run that measures it."""
    from bench.report import DOC, NOTES_MARKER, render_table

    table = rows(online)
    section = f"""{SECTION_BEGIN}
## The online path

Measured on {finished_at} by `python -m bench` (`make bench BENCH_ARGS="--only online"` runs only
this part), **medians of {online["runs"]} runs**, load average before the runs
{online["load_before"]}, after {online["load_after"]}; {machine["cores"]} cores, load generator
{machine["load_generator"]}, everything on the same machine.

{render_table(table)}

- **Single assignments**: wrk posts `{{"type": "echo", "data": {{"x": 1}}}}` to random bots of a
  {online.get("single", {}).get("bots", ASSIGN_BOTS):,}-bot swarm for {online.get("single", {}).get("seconds", 0):.0f} s at
  {ASSIGN_CONNECTIONS} connections, against our stack (2 sync gunicorn workers with auth,
  rate limit, audit and counters on; one 2-process worker) and then against `bench/plain_app.py`
  (Flask-SQLAlchemy: one INSERT, one counter UPDATE, one `apply_async`; the same 2 gunicorn
  workers and a 2-process Celery worker), alternately in the same run. Accepted/s counts 2xx
  answers. After each load the backlog is drained and every new task row must be completed and
  counted in `tasks_assigned` and `tasks_completed` exactly once.
- **Reads**: the stack idle, {READ_CONNECTIONS} connections, per endpoint and run; the trivial
  page is `GET /docs`. `GET /mass-actions/{{id}}` reads a finished 50,000-task mass-action, whose
  end-to-end time (POST to `completed`) is the last row of that block.
- **Mixed minute**: wrk assigning single tasks on {MIXED_CONNECTIONS} connections and reading
  (`GET /bots/{{id}}`, `/swarms/{{id}}`, `/bots/stats`) on {MIXED_CONNECTIONS} more for
  {online.get("mixed", {}).get("seconds", 0):.0f} s; two {MIXED_MASS_ACTION_BOTS:,}-task echo
  mass-actions are posted at a third and at half of it. "Drained" is the time from the end of
  the load until no task is open; the count check includes both mass-actions.

{SECTION_END}"""
    text = DOC.read_text() if DOC.exists() else ""
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head + section + rest.split(SECTION_END, 1)[1]
    elif NOTES_MARKER in text:
        head, notes = text.split(NOTES_MARKER, 1)
        text = head + NOTES_MARKER + "\n\n" + section + "\n" + notes
    else:
        text = text.rstrip() + "\n\n" + NOTES_MARKER + "\n\n" + section + "\n"
    DOC.write_text(text.rstrip() + "\n")

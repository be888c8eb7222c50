"""The `orchestrator` command: swarms, mass-actions with progress, stats, task watching, services.

Results go to stdout (tables, or the service's JSON with --json); progress and errors go to
stderr, so `orchestrator --json ... | jq` works. Exit codes: 0 done, 1 the watched work failed,
2 bad usage, 3 cannot connect, 4 the service refused the request, 5 gave up waiting.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from orchestrator_cli import __version__
from orchestrator_cli.http import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    EXIT_REFUSED,
    EXIT_TIMED_OUT,
    EXIT_WORK_FAILED,
    Client,
    ClientError,
    Refused,
    dumps,
)

TERMINAL_STATES = ("completed", "failed", "cancelled")
STATE_STYLES = {
    "completed": "green",
    "healthy": "green",
    "closed": "green",
    "running": "cyan",
    "assigned": "cyan",
    "queued": "cyan",
    "waiting": "dim",
    "unknown": "yellow",
    "half_open": "yellow",
    "failed": "red",
    "unhealthy": "red",
    "open": "red",
    "cancelled": "magenta",
}


@dataclass
class Options:
    """What the top-level options say, handed to every command."""

    url: str
    api_key: str | None
    timeout: float
    as_json: bool

    def client(self) -> Client:
        return Client(self.url, self.api_key, self.timeout)


class _Group(click.Group):
    """Turns the client's typed failures into a message on stderr and a distinct exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as error:
            click.echo(f"Error: {error.message}", err=True)
            ctx.exit(error.exit_code)


def _json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--json` after the command too (`orchestrator bots stats --json`)."""

    def _set(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_object(Options).as_json = True

    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=_set,
        help="Print the service's raw JSON.",
    )(command)


def _out() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _styled(state: str | None) -> str:
    state = state or "-"
    style = STATE_STYLES.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="ORCHESTRATOR_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The service's base URL (env ORCHESTRATOR_URL).",
)
@click.option(
    "--api-key",
    envvar="ORCHESTRATOR_API_KEY",
    default=None,
    help="Sent as `Authorization: Bearer <key>` (env ORCHESTRATOR_API_KEY).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds each request may take.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the service's raw JSON.")
@click.version_option(__version__, prog_name="orchestrator")
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None, timeout: float, as_json: bool) -> None:
    """Operate an Orchestrator Service: swarms, mass-actions, stats, tasks and services.

    Exit codes: 0 done, 1 the watched work failed, 2 bad usage, 3 cannot connect,
    4 the service refused the request, 5 gave up waiting.
    """
    ctx.obj = Options(url=url, api_key=api_key or None, timeout=timeout, as_json=as_json)


# ---- swarms --------------------------------------------------------------------------------


@cli.group()
def swarm() -> None:
    """Create swarms and give them work."""


@swarm.command("create")
@click.option("--count", type=int, required=True, help="How many bots.")
@click.option("--tier", required=True, help="standard, advanced or L20 (any case).")
@click.option(
    "--capability",
    "capabilities",
    multiple=True,
    help="A capability of every bot; repeat for more (e.g. analytics).",
)
@click.option("--name", default=None, help="The swarm's name (default: cli-swarm-<random>).")
@_json_option
@click.pass_obj
def swarm_create(
    options: Options, count: int, tier: str, capabilities: tuple[str, ...], name: str | None
) -> None:
    """Create a swarm of COUNT bots (POST /swarms)."""
    body = {
        "name": name or f"cli-swarm-{secrets.token_hex(3)}",
        "count": count,
        "tier": tier,
        "capabilities": list(capabilities),
    }
    created = options.client().post("/swarms", body)
    if options.as_json:
        click.echo(dumps(created))
        return
    capabilities_text = ", ".join(created.get("capabilities") or []) or "none"
    click.echo(
        f"Created swarm {created['id']} ({created['name']}): {created['bot_count']} "
        f"{created['tier']} bots, capabilities: {capabilities_text}."
    )
    click.echo(created["id"])


@swarm.command("show")
@click.argument("swarm_id")
@_json_option
@click.pass_obj
def swarm_show(options: Options, swarm_id: str) -> None:
    """A swarm's size, live bots and task totals (GET /swarms/{id})."""
    document = options.client().get(f"/swarms/{swarm_id}")
    if options.as_json:
        click.echo(dumps(document))
        return
    _out().print(_key_value_table(f"Swarm {swarm_id}", document))


@swarm.command("assign")
@click.argument("swarm_id")
@click.option("--type", "task_type", required=True, help="The task type (see GET /task-types).")
@click.option("--data", default="{}", show_default=True, help="The task's data as a JSON object.")
@click.option("--wait", is_flag=True, help="Show progress until every task is counted.")
@click.option(
    "--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="Poll s."
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=0,
    help="Give up waiting after this many seconds (exit 5); 0 waits for ever.",
)
@_json_option
@click.pass_obj
def swarm_assign(
    options: Options,
    swarm_id: str,
    task_type: str,
    data: str,
    wait: bool,
    interval: float,
    wait_timeout: float,
) -> None:
    """Mass-action: one task for every active bot of SWARM_ID (POST /swarms/{id}/tasks).

    With --wait, polls GET /swarms/{id} until completed + failed has grown by the number of
    assignments; exits 1 if any of them failed.
    """
    try:
        payload = json.loads(data)
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--data") from None
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--data")

    client = options.client()
    # Work counted before this mass-action: the target is that plus the new assignments.
    before = _done(client.get(f"/swarms/{swarm_id}")) if wait else (0, 0)
    assigned = client.post(f"/swarms/{swarm_id}/tasks", {"type": task_type, "data": payload})
    total = int(assigned.get("assignments", 0))
    if not wait:
        if options.as_json:
            click.echo(dumps(assigned))
        else:
            click.echo(f"Assigned {task_type} to {total:,} bots of swarm {swarm_id}.")
        return

    if not options.as_json:
        click.echo(f"Assigned {task_type} to {total:,} bots of swarm {swarm_id}.")
    swarm_doc, completed, failed = _wait_for_swarm(
        client, swarm_id, before, total, interval, wait_timeout, show=not options.as_json
    )
    if options.as_json:
        click.echo(dumps({"assignment": assigned, "swarm": swarm_doc}))
    counted = completed + failed
    if counted < total:
        click.echo(
            f"Gave up after {wait_timeout:g} s: {counted:,} of {total:,} tasks counted "
            f"({completed:,} completed, {failed:,} failed).",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_TIMED_OUT)
    if not options.as_json:
        click.echo(f"All {total:,} tasks counted: {completed:,} completed, {failed:,} failed.")
    if failed:
        raise click.exceptions.Exit(EXIT_WORK_FAILED)


def _done(swarm_doc: dict[str, Any]) -> tuple[int, int]:
    return int(swarm_doc.get("total_tasks_completed") or 0), int(
        swarm_doc.get("total_tasks_failed") or 0
    )


def _wait_for_swarm(
    client: Client,
    swarm_id: str,
    before: tuple[int, int],
    total: int,
    interval: float,
    wait_timeout: float,
    show: bool,
) -> tuple[dict[str, Any], int, int]:
    """Poll the swarm until `total` more tasks are completed or failed (or the time is up)."""
    deadline = time.monotonic() + wait_timeout if wait_timeout else None
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[red]{task.fields[failed]:,} failed"),
        TimeElapsedColumn(),
        console=_err(),
        disable=not show,
    )
    with progress:
        bar = progress.add_task(f"swarm {swarm_id}", total=max(total, 1), failed=0)
        while True:
            swarm_doc = client.get(f"/swarms/{swarm_id}")
            now_completed, now_failed = _done(swarm_doc)
            completed = max(now_completed - before[0], 0)
            failed = max(now_failed - before[1], 0)
            progress.update(bar, completed=min(completed + failed, total), failed=failed)
            if completed + failed >= total:
                progress.update(bar, completed=max(total, 1))
                return swarm_doc, completed, failed
            if deadline is not None and time.monotonic() >= deadline:
                return swarm_doc, completed, failed
            time.sleep(interval)


# ---- bots ----------------------------------------------------------------------------------


@cli.group()
def bots() -> None:
    """Service-wide bot figures."""


@bots.command("stats")
@_json_option
@click.pass_obj
def bots_stats(options: Options) -> None:
    """Totals, tier distribution, capacity and utilisation (GET /bots/stats)."""
    stats = options.client().get("/bots/stats")
    if options.as_json:
        click.echo(dumps(stats))
        return
    flat = {key: value for key, value in stats.items() if not isinstance(value, dict)}
    table = _key_value_table("Bot statistics", flat)
    for tier, count in (stats.get("tier_distribution") or {}).items():
        table.add_row(f"tier {tier}", _number(count))
    _out().print(table)


# ---- tasks and workflows -------------------------------------------------------------------


@cli.group()
def task() -> None:
    """Tasks (`task-…`) and workflows (`wf-…`)."""


@task.command("watch")
@click.argument("task_id")
@click.option(
    "--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="Poll s."
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=0,
    help="Give up after this many seconds (exit 5); 0 waits for ever.",
)
@_json_option
@click.pass_obj
def task_watch(options: Options, task_id: str, interval: float, wait_timeout: float) -> None:
    """Poll GET /task/{id} until it ends; exit 0 when completed, 1 when failed or cancelled."""
    client = options.client()
    deadline = time.monotonic() + wait_timeout if wait_timeout else None
    err = _err()
    document = client.get(f"/task/{task_id}")
    last_line = None
    with Live(_task_table(document), console=err, transient=True, auto_refresh=False) as live:
        while document.get("status") not in TERMINAL_STATES:
            line = _progress_line(document)
            if not err.is_terminal and line != last_line and not options.as_json:
                err.print(line)
            last_line = line
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval)
            document = client.get(f"/task/{task_id}")
            live.update(_task_table(document), refresh=True)

    status = document.get("status")
    if options.as_json:
        click.echo(dumps(document))
    else:
        _out().print(_task_table(document))
        if document.get("error"):
            click.echo(f"Error: {document['error']}")
    if status not in TERMINAL_STATES:
        click.echo(f"Gave up after {wait_timeout:g} s: {task_id} is still {status}.", err=True)
        raise click.exceptions.Exit(EXIT_TIMED_OUT)
    if status != "completed":
        raise click.exceptions.Exit(EXIT_WORK_FAILED)


def _progress_line(document: dict[str, Any]) -> str:
    steps = document.get("steps")
    if steps is None:
        return f"{document.get('task_id')}: {document.get('status')}"
    done = sum(1 for step in steps if step.get("status") in TERMINAL_STATES)
    return f"{document.get('task_id')}: {document.get('status')}, {done}/{len(steps)} steps ended"


def _task_table(document: dict[str, Any]) -> Table:
    """A workflow's steps, or a single task, as a table."""
    title = f"{document.get('task_id')}: {_styled(document.get('status'))}"
    steps = document.get("steps")
    if steps is None:
        table = Table(title=title, show_header=False)
        table.add_column("field")
        table.add_column("value", overflow="fold")
        for key in ("task_type", "tier", "bot_id", "swarm_id", "attempts", "result", "error"):
            if document.get(key) is not None:
                value = document[key]
                table.add_row(key, value if isinstance(value, str) else json.dumps(value))
        return table
    table = Table(title=title)
    for column in ("step", "name", "type", "status", "attempts", "ms", "error"):
        table.add_column(column, overflow="fold")
    for step in steps:
        table.add_row(
            str(step.get("step")),
            step.get("name") or "",
            step.get("task_type") or "",
            _styled(step.get("status")),
            str(step.get("attempts", "")),
            "" if step.get("duration_ms") is None else str(step["duration_ms"]),
            step.get("error") or "",
        )
    return table


# ---- services and scaling ------------------------------------------------------------------


@cli.command("services")
@_json_option
@click.pass_obj
def services(options: Options) -> None:
    """The downstream AI services and each URL's state (GET /services)."""
    try:
        document = options.client().get("/services")
    except Refused as error:
        if error.status == 404:
            click.echo(
                f"Error: {options.url} has no /services endpoint (HTTP 404): this version of "
                "the service does not offer service discovery.",
                err=True,
            )
            raise click.exceptions.Exit(EXIT_REFUSED) from None
        raise
    if options.as_json:
        click.echo(dumps(document))
        return
    table = Table(title="Services")
    for column in ("service", "url", "state", "latency ms", "breaker", "task types"):
        table.add_column(column, overflow="fold")
    for service in document.get("items", []):
        endpoints = service.get("endpoints") or []
        types = ", ".join(service.get("task_types") or [])
        if not endpoints:
            table.add_row(service.get("name"), "[dim](no URL configured)[/dim]", "", "", "", types)
        for index, endpoint in enumerate(endpoints):
            breaker = (endpoint.get("breaker") or {}).get("state")
            latency = endpoint.get("latency_ms")
            table.add_row(
                service.get("name") if index == 0 else "",
                endpoint.get("url"),
                _styled(endpoint.get("state")),
                "" if latency is None else f"{latency:.0f}",
                _styled(breaker) if breaker else "",
                types if index == 0 else "",
            )
    _out().print(table)


@cli.command("scaling")
@_json_option
@click.pass_obj
def scaling(options: Options) -> None:
    """The recommended worker count per tier, from backlog and waits (GET /scaling)."""
    document = options.client().get("/scaling")
    if options.as_json:
        click.echo(dumps(document))
        return
    table = Table(title=f"Recommended workers: {document.get('desired_workers')}")
    for column in ("tier", "queued messages", "waiting", "running", "oldest wait s", "workers"):
        table.add_column(column, justify="right")
    for tier, figures in (document.get("tiers") or {}).items():
        oldest = figures.get("oldest_waiting_seconds")
        table.add_row(
            tier,
            _number(figures.get("queue_depth")),
            _number(figures.get("waiting_tasks")),
            _number(figures.get("running_tasks")),
            "-" if oldest is None else f"{oldest:.1f}",
            _number(figures.get("desired_workers")),
        )
    _out().print(table)
    click.echo(
        f"per-worker rate {document.get('per_worker_rate')} tasks/s "
        f"({document.get('per_worker_rate_source')}), drain target "
        f"{document.get('target_drain_seconds')} s"
    )


def _key_value_table(title: str, document: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right", overflow="fold")
    for key, value in document.items():
        if isinstance(value, dict | list):
            value = json.dumps(value)
        table.add_row(key, _number(value))
    return table


def main() -> None:
    """The console script's entry point."""
    cli(prog_name="orchestrator")

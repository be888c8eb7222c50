"""The `orchestrator` command: swarms, mass-actions with progress, stats, task watching, services.

Results go to stdout (tables, or the service's JSON with --json); progress and errors go to
stderr, so `orchestrator --json ... | jq` works. Exit codes: 0 done, 1 the watched work failed,
2 bad usage, 3 cannot connect, 4 the service refused the request, 5 gave up waiting.
"""

from __future__ import annotations

import json
import secrets
import sys
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

    With --wait, follows the new mass-action (GET /mass-actions/{id}) until every task ended;
    exits 1 if any of them failed or was cancelled.
    """
    try:
        payload = json.loads(data)
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--data") from None
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--data")

    client = options.client()
    assigned = client.post(f"/swarms/{swarm_id}/tasks", {"type": task_type, "data": payload})
    total = int(assigned.get("assignments", 0))
    if not options.as_json:
        click.echo(f"Assigned {task_type} to {total:,} bots of swarm {swarm_id}.")
        click.echo(f"Mass-action {assigned.get('mass_action_id')}")
    if not wait:
        if options.as_json:
            click.echo(dumps(assigned))
        return
    document = _follow(
        client, assigned["mass_action_id"], interval, wait_timeout, show=not options.as_json
    )
    if options.as_json:
        click.echo(dumps({"assignment": assigned, "mass_action": document}))
    _exit_by_outcome(document, wait_timeout, summary=not options.as_json)


# ---- mass-actions --------------------------------------------------------------------------

MASS_ACTION_ENDED = ("completed", "failed", "cancelled")


@cli.group("mass-actions")
def mass_actions() -> None:
    """Follow, read and cancel mass-actions (`ma-…`)."""


@mass_actions.command("watch")
@click.argument("mass_action_id")
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
def mass_action_watch(
    options: Options, mass_action_id: str, interval: float, wait_timeout: float
) -> None:
    """A progress bar until MASS_ACTION_ID ends: exit 0 when every task completed, 1 when any
    failed or was cancelled, 5 on --wait-timeout."""
    document = _follow(
        options.client(), mass_action_id, interval, wait_timeout, show=not options.as_json
    )
    if options.as_json:
        click.echo(dumps(document))
    _exit_by_outcome(document, wait_timeout, summary=not options.as_json)


@mass_actions.command("results")
@click.argument("mass_action_id")
@click.option(
    "--status",
    type=click.Choice(["assigned", "running", "completed", "failed", "cancelled"]),
    default=None,
    help="Only tasks in this state.",
)
@click.option("--after", default=None, help="Start after this task id (task-<n>).")
@click.pass_obj
def mass_action_results(
    options: Options, mass_action_id: str, status: str | None, after: str | None
) -> None:
    """Every result of MASS_ACTION_ID as NDJSON on stdout, one task per line, in task order."""
    query = "&".join(
        f"{name}={value}" for name, value in (("status", status), ("after", after)) if value
    )
    path = f"/mass-actions/{mass_action_id}/results" + (f"?{query}" if query else "")
    out = sys.stdout.buffer
    for chunk in options.client().stream(path, "application/x-ndjson"):
        out.write(chunk)
    out.flush()


@mass_actions.command("show")
@click.argument("mass_action_id")
@_json_option
@click.pass_obj
def mass_action_show(options: Options, mass_action_id: str) -> None:
    """Progress, counts and aggregate of one mass-action (GET /mass-actions/{id})."""
    document = options.client().get(f"/mass-actions/{mass_action_id}")
    if options.as_json:
        click.echo(dumps(document))
        return
    flat = {key: value for key, value in document.items() if key not in ("counts", "aggregate")}
    table = _key_value_table(f"Mass-action {mass_action_id}", flat)
    for state, count in (document.get("counts") or {}).items():
        table.add_row(f"tasks {state}", _number(count))
    table.add_row("aggregate", json.dumps(document.get("aggregate")))
    _out().print(table)


@mass_actions.command("list")
@click.argument("swarm_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@_json_option
@click.pass_obj
def mass_action_list(options: Options, swarm_id: str, limit: int) -> None:
    """A swarm's mass-actions, newest first (GET /swarms/{id}/mass-actions)."""
    document = options.client().get(f"/swarms/{swarm_id}/mass-actions?limit={limit}")
    if options.as_json:
        click.echo(dumps(document))
        return
    table = Table(title=f"Mass-actions of {swarm_id}")
    for column in ("id", "type", "status", "done", "failed", "cancelled", "created"):
        table.add_column(column)
    for item in document.get("items", []):
        counts = item.get("counts") or {}
        table.add_row(
            item.get("id"),
            item.get("task_type"),
            _styled(item.get("status")),
            f"{item.get('percent', 0):.1f}% of {_number(counts.get('total'))}",
            _number(counts.get("failed")),
            _number(counts.get("cancelled")),
            item.get("created_at") or "",
        )
    _out().print(table)


@mass_actions.command("cancel")
@click.argument("mass_action_id")
@_json_option
@click.pass_obj
def mass_action_cancel(options: Options, mass_action_id: str) -> None:
    """Cancel every task not yet started (DELETE /mass-actions/{id}); running tasks finish."""
    document = options.client().delete(f"/mass-actions/{mass_action_id}")
    if options.as_json:
        click.echo(dumps(document))
        return
    counts = document.get("counts") or {}
    click.echo(
        f"Mass-action {mass_action_id}: {_number(counts.get('cancelled'))} tasks cancelled, "
        f"{_number(counts.get('running'))} still running."
    )


def _follow(
    client: Client, mass_action_id: str, interval: float, wait_timeout: float, show: bool
) -> dict[str, Any]:
    """Poll the mass-action until it ends (or the time is up), drawing a bar on stderr."""
    deadline = time.monotonic() + wait_timeout if wait_timeout else None
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("[red]{task.fields[failed]:,} failed"),
        TextColumn("[magenta]{task.fields[cancelled]:,} cancelled"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=_err(),
        disable=not show,
    )
    with progress:
        bar = progress.add_task(mass_action_id, total=1, failed=0, cancelled=0, rate="")
        while True:
            document = client.get(f"/mass-actions/{mass_action_id}")
            counts = document.get("counts") or {}
            total = int(counts.get("total") or 0)
            ended = sum(int(counts.get(state) or 0) for state in MASS_ACTION_ENDED)
            rate = document.get("tasks_per_second")
            eta = document.get("eta_seconds")
            progress.update(
                bar,
                total=max(total, 1),
                completed=ended if total else 1,
                failed=int(counts.get("failed") or 0),
                cancelled=int(counts.get("cancelled") or 0),
                rate=(f"{rate:,.0f}/s" if rate else "")
                + (f" ETA {eta:.0f} s" if eta and document.get("status") == "running" else ""),
            )
            if document.get("status") in MASS_ACTION_ENDED:
                return document
            if deadline is not None and time.monotonic() >= deadline:
                return document
            time.sleep(interval)


def _exit_by_outcome(document: dict[str, Any], wait_timeout: float, summary: bool) -> None:
    """Say how the mass-action ended; exit 0 only if every task completed."""
    counts = document.get("counts") or {}
    total = int(counts.get("total") or 0)
    completed, failed = int(counts.get("completed") or 0), int(counts.get("failed") or 0)
    cancelled = int(counts.get("cancelled") or 0)
    status = document.get("status")
    if status not in MASS_ACTION_ENDED:
        click.echo(
            f"Gave up after {wait_timeout:g} s: {completed + failed + cancelled:,} of {total:,} "
            f"tasks ended ({completed:,} completed, {failed:,} failed, {cancelled:,} cancelled).",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_TIMED_OUT)
    if summary:
        click.echo(
            f"Mass-action {document.get('id')} {status}: all {total:,} tasks counted: "
            f"{completed:,} completed, {failed:,} failed, {cancelled:,} cancelled."
        )
    if failed or cancelled or status != "completed":
        raise click.exceptions.Exit(EXIT_WORK_FAILED)


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

"""`flask` commands for operators."""

from __future__ import annotations

import click
from flask import Flask

from app.errors import Conflict, ServiceError
from app.models import ROLES
from app.services import keys
from app.services.ids import iso


def register_commands(app: Flask) -> None:
    """Add the service's commands to `flask`."""

    keys_group = click.Group("keys", help="Create, list and revoke API keys.")
    app.cli.add_command(keys_group)

    @keys_group.command("create")
    @click.option("--name", required=True, help="A name to tell the key apart (unique).")
    @click.option("--role", type=click.Choice(ROLES), default="operator", show_default=True)
    @click.option("--tenant", default=None, help="Limit the key to this tenant's resources.")
    @click.option(
        "--if-missing",
        is_flag=True,
        help="Succeed without a new key when one has this name (a first-start step).",
    )
    def create_key_command(name: str, role: str, tenant: str | None, if_missing: bool) -> None:
        """Create a key and print it once; only its hash is stored."""
        try:
            key, plaintext = keys.create_key(name, role, tenant)
        except Conflict as error:
            if not if_missing:
                raise click.ClickException(error.message) from None
            click.echo(
                f"{error.message} It was printed when it was made; `keys create --name NAME` "
                "makes another.",
                err=True,
            )
            return
        except ServiceError as error:
            raise click.ClickException(error.message) from None
        click.echo(plaintext)
        click.echo(
            f"created {key.role} key {key.name!r}"
            + (f" for tenant {key.tenant!r}" if key.tenant else "")
            + "; store it now, it cannot be shown again",
            err=True,
        )

    @keys_group.command("list")
    def list_keys_command() -> None:
        """List keys: name, role, tenant, prefix, created, revoked."""
        for key in keys.list_keys():
            state = f"revoked {iso(key.revoked_at)}" if key.revoked_at else "active"
            click.echo(
                f"{key.name}\t{key.role}\t{key.tenant or '-'}\t{key.prefix}…"
                f"\t{iso(key.created_at)}\t{state}"
            )

    @keys_group.command("revoke")
    @click.argument("name")
    def revoke_key_command(name: str) -> None:
        """Revoke a key by name; it stops working at once."""
        try:
            keys.revoke_key(name)
        except ServiceError as error:
            raise click.ClickException(error.message) from None
        click.echo(f"revoked {name!r}")

    @app.cli.command("reconcile")
    def reconcile_command() -> None:
        """Re-publish stranded tasks and recover expired leases once."""
        from app.services.reconciler import reconcile

        report = reconcile()
        click.echo(
            f"requeued {report.requeued}, failed {report.failed}, republished {report.republished}"
        )

    @app.cli.command("purge")
    def purge_command() -> None:
        """Run one retention pass (TASK_RETENTION_DAYS, AUDIT_RETENTION_DAYS) now."""
        from app.services.retention import purge

        report = purge()
        click.echo(
            f"deleted {report.tasks} tasks, {report.workflows} workflows, {report.audit} audit"
            f" entries, {report.payloads} payloads in {report.seconds:.1f} s"
        )

"""`flask` commands for operators."""

from __future__ import annotations

import click
from flask import Flask


def register_commands(app: Flask) -> None:
    """Add the service's commands to `flask`."""

    @app.cli.command("reconcile")
    def reconcile_command() -> None:
        """Re-publish stranded tasks and recover expired leases once."""
        from app.services.reconciler import reconcile

        report = reconcile()
        click.echo(
            f"requeued {report.requeued}, failed {report.failed}, republished {report.republished}"
        )

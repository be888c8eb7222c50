"""Workflow steps: dependencies, per-step options and a workflow status and deadline.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tasks", sa.Column("timeout_s", sa.Float(), nullable=True))
    op.add_column("tasks", sa.Column("retries", sa.Integer(), nullable=True))
    op.add_column(
        "workflows",
        sa.Column(
            "status", sa.String(length=16), server_default=sa.text("'active'"), nullable=False
        ),
    )
    op.add_column(
        "workflows",
        sa.Column(
            "spec",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column("workflows", sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("workflows", sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("workflows", sa.Column("error", sa.Text(), nullable=True))
    op.create_index(
        "ix_workflows_active",
        "workflows",
        ["deadline_at"],
        unique=False,
        postgresql_where=sa.text("status = 'active'"),
    )


def downgrade():
    op.drop_index(
        "ix_workflows_active", table_name="workflows", postgresql_where=sa.text("status = 'active'")
    )
    op.drop_column("workflows", "error")
    op.drop_column("workflows", "finished_at")
    op.drop_column("workflows", "deadline_at")
    op.drop_column("workflows", "spec")
    op.drop_column("workflows", "status")
    op.drop_column("tasks", "retries")
    op.drop_column("tasks", "timeout_s")

"""Service registry: the downstream AI services, their URLs and each URL's last health probe.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    # Rows are seeded by the application from the *_SERVICE_URL variables on first use
    # (app/services/registry.py), not here: a migration must not depend on the environment.
    op.create_table(
        "services",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column(
            "urls", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False
        ),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("health_path", sa.Text(), server_default=sa.text("'/health'"), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column(
            "task_types",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("max_concurrency", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=8), server_default="env", nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "service_endpoints",
        sa.Column("service", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="unknown", nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("last_probe_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["service"], ["services.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service", "url"),
    )


def downgrade():
    op.drop_table("service_endpoints")
    op.drop_table("services")

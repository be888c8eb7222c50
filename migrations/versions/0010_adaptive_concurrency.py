"""Adaptive concurrency: `max_concurrency: "auto"` with a ceiling.

- services.max_concurrency_auto: the limit is learned from the calls' latency and errors
  (app/services/adaptive_limit.py) instead of fixed by max_concurrency.
- services.max_concurrency_ceiling: the learned limit never exceeds it; an automatic service
  always has one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "services",
        sa.Column(
            "max_concurrency_auto", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
    )
    op.add_column("services", sa.Column("max_concurrency_ceiling", sa.Integer(), nullable=True))
    op.create_check_constraint(
        "ck_services_auto_has_ceiling",
        "services",
        "NOT max_concurrency_auto OR max_concurrency_ceiling IS NOT NULL",
    )


def downgrade():
    op.drop_constraint("ck_services_auto_has_ceiling", "services", type_="check")
    op.drop_column("services", "max_concurrency_ceiling")
    op.drop_column("services", "max_concurrency_auto")

"""Datasets split over a swarm's bots.

- tasks.slice_count: how many parts a mass-action's dataset is split into (the swarm's active
  bots when it was assigned); with slice_index it names the task's part.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tasks", sa.Column("slice_count", sa.Integer(), nullable=True))


def downgrade():
    op.drop_column("tasks", "slice_count")

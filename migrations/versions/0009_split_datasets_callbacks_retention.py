"""Datasets split over a swarm's bots, callbacks, retention.

- tasks.slice_count: how many parts a mass-action's dataset is split into (the swarm's active
  bots when it was assigned); with slice_index it names the task's part.
- workflows.callback_url, mass_actions.callback_url and the callbacks table: one signed POST of a
  resource's summary when it ends, with its delivery state.
- a BRIN index on tasks.payload_id: the retention job asks whether any task still uses a payload;
  payload ids grow with the ids of the tasks that use them, so a block-range index answers at
  almost no cost to the 50,000-row inserts.
- tasks.result compressed with lz4 where the server has it: part results carry packed summaries
  that pglz spends time on for nothing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tasks", sa.Column("slice_count", sa.Integer(), nullable=True))
    op.add_column("workflows", sa.Column("callback_url", sa.Text(), nullable=True))
    op.add_column("mass_actions", sa.Column("callback_url", sa.Text(), nullable=True))
    op.create_table(
        "callbacks",
        sa.Column("resource_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("summary", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("resource_id"),
    )
    op.create_index(
        "ix_callbacks_pending",
        "callbacks",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.execute(
        "CREATE INDEX ix_tasks_payload_brin ON tasks USING brin (payload_id)"
        " WITH (autosummarize = on)"
    )
    op.execute(
        """
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
                WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)) THEN
        ALTER TABLE tasks ALTER COLUMN result SET COMPRESSION lz4;
    END IF;
END $$
"""
    )


def downgrade():
    op.drop_index("ix_tasks_payload_brin", table_name="tasks")
    op.drop_index("ix_callbacks_pending", table_name="callbacks")
    op.drop_table("callbacks")
    op.drop_column("mass_actions", "callback_url")
    op.drop_column("workflows", "callback_url")
    op.drop_column("tasks", "slice_count")

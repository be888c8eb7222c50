"""Bulk-path tuning: HOT counter updates on bots, cheaper 50,000-row task inserts.

- bots gets fillfactor 50: a mass-action bumps `total_tasks` on every bot of the swarm and each
  recorded chunk bumps the outcome counters; with room left on the page those updates are HOT
  (no new entries in bots_pkey or ix_bots_swarm_status). Applies to pages written from now on.
- tasks.workflow_id loses its foreign key: its RI trigger fired once per inserted task (50,000
  times per mass-action) although mass-action rows never name a workflow. Workflows are never
  deleted and a workflow's steps are inserted in the workflow's own transaction.
- ix_tasks_workflow becomes partial (`WHERE workflow_id IS NOT NULL`): mass-action rows no longer
  add a NULL entry each.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("ALTER TABLE bots SET (fillfactor = 50)")
    op.drop_constraint("tasks_workflow_id_fkey", "tasks", type_="foreignkey")
    op.drop_index("ix_tasks_workflow", table_name="tasks")
    op.create_index(
        "ix_tasks_workflow",
        "tasks",
        ["workflow_id", "step"],
        unique=False,
        postgresql_where=sa.text("workflow_id IS NOT NULL"),
    )


def downgrade():
    op.drop_index(
        "ix_tasks_workflow", table_name="tasks", postgresql_where=sa.text("workflow_id IS NOT NULL")
    )
    op.create_index("ix_tasks_workflow", "tasks", ["workflow_id", "step"], unique=False)
    op.create_foreign_key("tasks_workflow_id_fkey", "tasks", "workflows", ["workflow_id"], ["id"])
    op.execute("ALTER TABLE bots RESET (fillfactor)")

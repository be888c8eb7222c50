"""Counters without hot rows: the service totals and the swarms' task counters in shard rows.

- counters gains `shard` (part of the key): each transaction adds to the shard of its database
  backend, so concurrent writers touch different rows; a total is the sum of its shards. Existing
  values stay as shard 0.
- swarm_counter_shards holds what single assignments and recorded outcomes add to a swarm's task
  counters, one row per (swarm, shard); a swarm's counter is its row's value (bulk moves, made
  under the swarm's lock) plus its shards.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "counters",
        sa.Column("shard", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.drop_constraint("counters_pkey", "counters", type_="primary")
    op.create_primary_key("counters_pkey", "counters", ["name", "shard"])
    op.create_table(
        "swarm_counter_shards",
        sa.Column("swarm_id", sa.String(length=40), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("total_tasks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("completed_tasks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed_tasks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cancelled_tasks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("swarm_id", "shard"),
    )


def downgrade():
    op.execute(
        "UPDATE swarms s SET total_tasks = s.total_tasks + c.total_tasks,"
        " completed_tasks = s.completed_tasks + c.completed_tasks,"
        " failed_tasks = s.failed_tasks + c.failed_tasks,"
        " cancelled_tasks = s.cancelled_tasks + c.cancelled_tasks"
        " FROM (SELECT swarm_id, sum(total_tasks) AS total_tasks,"
        " sum(completed_tasks) AS completed_tasks, sum(failed_tasks) AS failed_tasks,"
        " sum(cancelled_tasks) AS cancelled_tasks FROM swarm_counter_shards GROUP BY swarm_id) c"
        " WHERE s.id = c.swarm_id"
    )
    op.drop_table("swarm_counter_shards")
    op.execute(
        "CREATE TABLE counters_summed AS SELECT name, sum(value)::bigint AS value"
        " FROM counters GROUP BY name"
    )
    op.execute("DELETE FROM counters")
    op.drop_constraint("counters_pkey", "counters", type_="primary")
    op.drop_column("counters", "shard")
    op.execute("INSERT INTO counters (name, value) SELECT name, value FROM counters_summed")
    op.execute("DROP TABLE counters_summed")
    op.create_primary_key("counters_pkey", "counters", ["name"])

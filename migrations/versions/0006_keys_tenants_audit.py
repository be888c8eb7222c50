"""API keys, tenants and the audit log.

- api_keys: keys stored as SHA-256 hashes, with a role and an optional tenant.
- audit_log: one row per successful control action.
- swarms, bots and workflows get an owning tenant (NULL: none); bot_census is keyed by tenant
  too, so a tenant key's stats stay a read of a few rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=True),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("key_name", sa.String(length=100), nullable=True),
        sa.Column("tenant", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for table in ("swarms", "bots", "workflows"):
        op.add_column(table, sa.Column("tenant", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_bots_tenant", "bots", ["tenant"], postgresql_where=sa.text("tenant IS NOT NULL")
    )
    op.add_column(
        "bot_census",
        sa.Column("tenant", sa.String(length=64), server_default=sa.text("''"), nullable=False),
    )
    op.drop_constraint("bot_census_pkey", "bot_census", type_="primary")
    op.create_primary_key("bot_census_pkey", "bot_census", ["tenant", "swarm_id", "tier", "status"])
    # A swarm's tallies are read by swarm id; the primary key now leads with the tenant.
    op.create_index("ix_bot_census_swarm", "bot_census", ["swarm_id"])


def downgrade():
    op.drop_index("ix_bot_census_swarm", table_name="bot_census")
    op.drop_constraint("bot_census_pkey", "bot_census", type_="primary")
    # Fold the tenants' tallies back into one row per (swarm, tier, status).
    op.execute(
        "CREATE TEMP TABLE census_folded AS SELECT swarm_id, tier, status, sum(n) AS n"
        " FROM bot_census GROUP BY swarm_id, tier, status"
    )
    op.execute("DELETE FROM bot_census")
    op.drop_column("bot_census", "tenant")
    op.execute("INSERT INTO bot_census SELECT swarm_id, tier, status, n FROM census_folded")
    op.create_primary_key("bot_census_pkey", "bot_census", ["swarm_id", "tier", "status"])
    op.drop_index("ix_bots_tenant", table_name="bots")
    for table in ("workflows", "bots", "swarms"):
        op.drop_column(table, "tenant")
    op.drop_table("audit_log")
    op.drop_table("api_keys")

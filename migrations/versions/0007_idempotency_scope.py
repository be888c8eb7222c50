"""Idempotency keys belong to a caller, and expire.

- idempotency_keys gets `scope` (the caller: `key:<api key id>`, `admin`, `addr:<address>`) and
  its primary key becomes (scope, key), so two callers' identical keys are independent.
- Answers stored before this revision have no known caller: they get the scope `unscoped`, which
  no caller has, so they are never replayed to anyone and go with the first purge after
  IDEMPOTENCY_TTL.
- An index on created_at lets the purge find expired answers without a scan.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        "idempotency_keys",
        sa.Column("scope", sa.String(length=100), nullable=False, server_default="unscoped"),
    )
    op.alter_column("idempotency_keys", "scope", server_default=None)
    op.drop_constraint("idempotency_keys_pkey", "idempotency_keys", type_="primary")
    op.create_primary_key("idempotency_keys_pkey", "idempotency_keys", ["scope", "key"])
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade():
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    # One key may now be held by several callers; the old table holds one answer per key.
    op.execute("DELETE FROM idempotency_keys")
    op.drop_constraint("idempotency_keys_pkey", "idempotency_keys", type_="primary")
    op.drop_column("idempotency_keys", "scope")
    op.create_primary_key("idempotency_keys_pkey", "idempotency_keys", ["key"])

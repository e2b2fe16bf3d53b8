"""case-insensitive prefix search on reference and email (issue 16, #6 #7)

Search ranges over lower(reference) and lower(email), compared byte by byte
(PostgreSQL's text_pattern_ops, SQLite's own BINARY), each behind an index. Amounts
sort only within a currency, so the amount indexes lead with the currency.

Revision ID: b16e2f5e8a02
Revises: a16e1a0c3d01
Create Date: 2026-12-07 17:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b16e2f5e8a02'
down_revision = 'a16e1a0c3d01'
branch_labels = None
depends_on = None


def _search_key(column):
    ops = " text_pattern_ops" if op.get_bind().dialect.name == "postgresql" else ""
    return sa.text(f"lower({column}){ops}")


def upgrade():
    op.create_index(
        "ix_transaction_org_ref_search", "transaction", ["organization_id", _search_key("transaction_ref")]
    )
    op.create_index(
        "ix_transaction_org_email_search", "transaction", ["organization_id", _search_key("customer_email")]
    )
    op.create_index(
        "ix_transaction_org_currency_amount", "transaction", ["organization_id", "currency", "amount", "id"]
    )
    op.drop_index("ix_transaction_org_amount", table_name="transaction")
    op.drop_index("ix_transaction_org_status_amount", table_name="transaction")


def downgrade():
    op.create_index(
        "ix_transaction_org_status_amount", "transaction", ["organization_id", "status", "amount", "id"]
    )
    op.create_index("ix_transaction_org_amount", "transaction", ["organization_id", "amount", "id"])
    op.drop_index("ix_transaction_org_currency_amount", table_name="transaction")
    # On SQLite a later downgrade that rebuilt the table (batch mode) could not carry
    # these expression indexes over (SQLite cannot reflect them): they may be gone.
    op.drop_index("ix_transaction_org_email_search", table_name="transaction", if_exists=True)
    op.drop_index("ix_transaction_org_ref_search", table_name="transaction", if_exists=True)

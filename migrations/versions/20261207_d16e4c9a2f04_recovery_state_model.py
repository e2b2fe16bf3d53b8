"""one state model for cancelled recoveries (issue 16, #3 #4 #5)

Closing a transaction is now its own act (status `cancelled`, with who, when
and why); cancelling a recovery leaves the transaction open (`failed`).
Attempts record when they ended, for the recovery rate over a period.

Revision ID: d16e4c9a2f04
Revises: c16e3b7d4c03
Create Date: 2026-12-07 17:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd16e4c9a2f04'
down_revision = 'c16e3b7d4c03'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('transaction', schema=None) as batch_op:
        batch_op.add_column(sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('closed_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('closed_reason', sa.String(length=500), nullable=True))
    with op.batch_alter_table('recovery_attempt', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_recovery_attempt_org_ended', ['organization_id', 'ended_at'], unique=False)
    # Until now only a cancelled recovery made a transaction `cancelled`: under the new
    # model that leaves it open, so those become `failed` again (their attempt stays
    # cancelled and the page says so). Nobody has closed a transaction yet.
    op.execute("UPDATE \"transaction\" SET status = 'failed' WHERE status = 'cancelled'")
    # When each finished attempt ended: its payment, else its last change (an ended
    # attempt is not changed again).
    op.execute(
        "UPDATE recovery_attempt SET ended_at = COALESCE(completed_at, updated_at) "
        "WHERE status IN ('completed', 'expired', 'exhausted', 'cancelled', 'failed')"
    )


def downgrade():
    # The older model has no open transaction after a cancelled recovery, nor a closed one
    # to tell apart from it: both read `cancelled` there, as before.
    op.execute(
        "UPDATE \"transaction\" SET status = 'cancelled' WHERE status = 'failed' AND EXISTS ("
        "SELECT 1 FROM recovery_attempt a WHERE a.transaction_id = \"transaction\".id "
        "AND a.status = 'cancelled' AND NOT EXISTS (SELECT 1 FROM recovery_attempt b "
        "WHERE b.transaction_id = a.transaction_id AND b.created_at > a.created_at))"
    )
    with op.batch_alter_table('recovery_attempt', schema=None) as batch_op:
        batch_op.drop_index('ix_recovery_attempt_org_ended')
        batch_op.drop_column('ended_at')
    with op.batch_alter_table('transaction', schema=None) as batch_op:
        batch_op.drop_column('closed_reason')
        batch_op.drop_column('closed_by')
        batch_op.drop_column('closed_at')

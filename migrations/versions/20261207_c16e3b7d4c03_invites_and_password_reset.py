"""user invitations and password reset (issue 16, #12 #13)

Revision ID: c16e3b7d4c03
Revises: b16e2f5e8a02
Create Date: 2026-12-07 17:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c16e3b7d4c03'
down_revision = 'b16e2f5e8a02'
branch_labels = None
depends_on = None


def upgrade():
    # An invited user has no password until they accept; invited_at dates the latest invitation.
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.alter_column('password_hash', existing_type=sa.String(length=255), nullable=True)
        batch_op.add_column(sa.Column('invited_at', sa.DateTime(timezone=True), nullable=True))

    # Emails to staff (password reset, invitation): not customer messages.
    op.create_table('staff_email',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('organization_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.String(length=254), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('body_text', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_staff_email_organization_id_organization')),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_staff_email_user_id_user'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_staff_email'))
    )
    with op.batch_alter_table('staff_email', schema=None) as batch_op:
        batch_op.create_index('ix_staff_email_org_created', ['organization_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_staff_email_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('staff_email', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staff_email_user_id'))
        batch_op.drop_index('ix_staff_email_org_created')
    op.drop_table('staff_email')

    # Pending invitations cannot survive a NOT NULL password: remove them first.
    op.execute("DELETE FROM \"user\" WHERE password_hash IS NULL")
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('invited_at')
        batch_op.alter_column('password_hash', existing_type=sa.String(length=255), nullable=False)

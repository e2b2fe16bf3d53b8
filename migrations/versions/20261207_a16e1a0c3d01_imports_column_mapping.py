"""import column mapping remembered per organization (issue 16, #1 #10 #11)

Revision ID: a16e1a0c3d01
Revises: 6232d9d93ae2
Create Date: 2026-12-07 17:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a16e1a0c3d01'
down_revision = '6232d9d93ae2'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('import_mapping',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('organization_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('mapping', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organization.id'], name=op.f('fk_import_mapping_organization_id_organization')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_import_mapping')),
    sa.UniqueConstraint('organization_id', 'fingerprint', name=op.f('uq_import_mapping_organization_id'))
    )
    # Existing imports are finished or queued ones with no mapping: they read the
    # file's own column names, as before. The server defaults fill the old rows.
    with op.batch_alter_table('csv_import', schema=None) as batch_op:
        batch_op.add_column(sa.Column('skipped_rows', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('mapping', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('warnings', sa.JSON(), nullable=False, server_default='[]'))
    # The models set these on insert; the defaults were only for the rows already there.
    with op.batch_alter_table('csv_import', schema=None) as batch_op:
        batch_op.alter_column('skipped_rows', server_default=None)
        batch_op.alter_column('warnings', server_default=None)


def downgrade():
    with op.batch_alter_table('csv_import', schema=None) as batch_op:
        batch_op.drop_column('warnings')
        batch_op.drop_column('mapping')
        batch_op.drop_column('skipped_rows')
    op.drop_table('import_mapping')

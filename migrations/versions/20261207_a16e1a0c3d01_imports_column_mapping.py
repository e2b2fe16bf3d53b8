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
    pass


def downgrade():
    pass

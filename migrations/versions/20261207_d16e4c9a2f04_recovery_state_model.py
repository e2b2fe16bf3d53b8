"""one state model for cancelled recoveries (issue 16, #3 #4 #5)

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
    pass


def downgrade():
    pass

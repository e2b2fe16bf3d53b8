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
    pass


def downgrade():
    pass

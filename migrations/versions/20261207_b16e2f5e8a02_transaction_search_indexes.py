"""case-insensitive prefix search on reference and email (issue 16, #6 #7)

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


def upgrade():
    pass


def downgrade():
    pass

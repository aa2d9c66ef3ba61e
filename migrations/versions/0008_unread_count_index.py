"""Index unread messages per folder, so the sidebar count does not read whole folders

Revision ID: 0008
Revises: 0004
Create Date: 2026-11-29 12:20:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.create_index('ix_message_folder_unread', ['folder_id', 'is_read'], unique=False)


def downgrade():
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_index('ix_message_folder_unread')

"""The Sent copy's envelope, read when a message is queued, so the worker need not parse it

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 01:20:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    # Rows queued before this have none: the worker parses their bytes when it files them.
    with op.batch_alter_table('outgoing_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sent_envelope', sa.JSON(), nullable=True))


def downgrade():
    # Dropped in place (SQLite 3.35 and newer can): SQLite's usual copy-and-rename would
    # drop the old table, and with foreign keys on that deletes every outgoing_recipient
    # row through ON DELETE CASCADE.
    with op.batch_alter_table('outgoing_message', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('sent_envelope')

"""Blobs stored in pack files: a batch of messages in one file, located by pack and offset

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 17:30:00

"""
import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('blob', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pack', sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column('pack_offset', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_blob_pack', ['pack'], unique=False)


def downgrade():
    # Packed bytes would be unreachable without these columns: refuse rather than lose mail.
    bind = op.get_bind()
    packed = bind.execute(sa.text("SELECT count(*) FROM blob WHERE pack IS NOT NULL")).scalar()
    if packed:
        raise RuntimeError(f"{packed} messages are stored in pack files; run `flask --app wsgi "
                           "blobs gc --unpack` before downgrading")
    # In place, not by SQLite's copy-and-rename: dropping the old blob table would delete
    # its rows under foreign keys that point at them (or fail on them).
    with op.batch_alter_table('blob', schema=None, recreate='never') as batch_op:
        batch_op.drop_index('ix_blob_pack')
        batch_op.drop_column('pack_offset')
        batch_op.drop_column('pack')

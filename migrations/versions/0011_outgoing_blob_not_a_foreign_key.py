"""An outbox row names its bytes without a foreign key: once sent or cancelled they may go

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 07:30:00

An outgoing message gives up its reference to its bytes once it is sent for good (its Sent
copy holds them) or cancelled. With a foreign key to blob, collecting those bytes later
(`blobs gc`, after the Sent copy was deleted) failed on the row that still named them.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

CONSTRAINT = 'fk_outgoing_message_blob_sha256_blob'


def _rebuild_on_sqlite(change) -> None:
    """SQLite changes a constraint by copying the table and dropping the old one. With
    foreign keys on, that drop would delete every outgoing_recipient row (ON DELETE
    CASCADE): they are off while it runs (a pragma that only works outside a
    transaction), and checked before it commits.

    Should the rebuild fail, the connection is thrown away: its open transaction is rolled
    back, not committed by the pragma's autocommit block, and the pool hands out no
    connection with foreign keys off."""
    context = op.get_context()
    bind = op.get_bind()
    with context.autocommit_block():
        op.execute('PRAGMA foreign_keys=OFF')
    try:
        with op.batch_alter_table('outgoing_message', schema=None, recreate='always') as batch_op:
            change(batch_op)
        broken = bind.exec_driver_sql('PRAGMA foreign_key_check').fetchall()
        if broken:
            raise RuntimeError(f'rows that point at nothing after the rebuild: {broken[:5]}')
    except BaseException:
        bind.invalidate()
        raise
    with context.autocommit_block():
        op.execute('PRAGMA foreign_keys=ON')


def upgrade():
    if op.get_bind().dialect.name == 'sqlite':
        _rebuild_on_sqlite(lambda batch_op: batch_op.drop_constraint(CONSTRAINT,
                                                                     type_='foreignkey'))
    else:
        op.drop_constraint(CONSTRAINT, 'outgoing_message', type_='foreignkey')


def downgrade():
    # Rows whose bytes were collected get their blob row back (count 0, bytes gone: the
    # old code never reads them, the messages being sent or cancelled), so that the key
    # holds and no outbox row is lost.
    op.execute(
        "INSERT INTO blob (sha256, size, refcount, created_at) "
        "SELECT o.blob_sha256, max(o.size), 0, CURRENT_TIMESTAMP FROM outgoing_message o "
        "WHERE NOT EXISTS (SELECT 1 FROM blob b WHERE b.sha256 = o.blob_sha256) "
        "GROUP BY o.blob_sha256")
    if op.get_bind().dialect.name == 'sqlite':
        _rebuild_on_sqlite(lambda batch_op: batch_op.create_foreign_key(
            CONSTRAINT, 'blob', ['blob_sha256'], ['sha256']))
    else:
        op.create_foreign_key(CONSTRAINT, 'outgoing_message', 'blob', ['blob_sha256'],
                              ['sha256'])

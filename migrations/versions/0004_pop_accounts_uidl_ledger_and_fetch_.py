"""POP accounts, UIDL ledger and fetch journal

The ledger commits with the messages it records, so a fetch that dies anywhere stores
nothing twice; the journal keeps one row per run for the account page and operators.

Revision ID: 0004
Revises: 0006
Create Date: 2026-11-29 11:18:11.146511

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('pop_account',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('mail_account_id', sa.Integer(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('security', sa.String(length=16), nullable=False),
    sa.Column('username', sa.String(length=320), nullable=False),
    sa.Column('password_encrypted', sa.Text(), nullable=False),
    sa.Column('delete_from_server', sa.Boolean(), nullable=False),
    sa.Column('new_only', sa.Boolean(), nullable=False),
    sa.Column('baseline_pending', sa.Boolean(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('interval_seconds', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_reason', sa.String(length=32), nullable=False),
    sa.Column('auth_failures', sa.Integer(), nullable=False),
    sa.Column('connection_failures', sa.Integer(), nullable=False),
    sa.Column('last_error_kind', sa.String(length=32), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_fetch_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_fetch_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('server_messages', sa.Integer(), nullable=False),
    sa.Column('messages_fetched', sa.Integer(), nullable=False),
    sa.Column('messages_left', sa.Integer(), nullable=False),
    sa.Column('messages_skipped', sa.Integer(), nullable=False),
    sa.Column('messages_quarantined', sa.Integer(), nullable=False),
    sa.Column('rate_per_second', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['mail_account_id'], ['mail_account.id'], name=op.f('fk_pop_account_mail_account_id_mail_account'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organization.id'], name=op.f('fk_pop_account_org_id_organization'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_pop_account_user_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pop_account')),
    sa.UniqueConstraint('mail_account_id', name=op.f('uq_pop_account_mail_account_id'))
    )
    with op.batch_alter_table('pop_account', schema=None) as batch_op:
        batch_op.create_index('ix_pop_account_due', ['state', 'next_fetch_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_pop_account_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pop_account_user_id'), ['user_id'], unique=False)
    op.create_table('pop_fetch_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('fetched', sa.Integer(), nullable=False),
    sa.Column('skipped', sa.Integer(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('error_kind', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['pop_account.id'], name=op.f('fk_pop_fetch_run_account_id_pop_account'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pop_fetch_run'))
    )
    with op.batch_alter_table('pop_fetch_run', schema=None) as batch_op:
        batch_op.create_index('ix_pop_fetch_run_account_started', ['account_id', 'started_at'], unique=False)
    op.create_table('pop_uidl',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('uidl', sa.String(length=255), nullable=False),
    sa.Column('message_pk', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['pop_account.id'], name=op.f('fk_pop_uidl_account_id_pop_account'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_pk'], ['message.id'], name=op.f('fk_pop_uidl_message_pk_message'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pop_uidl')),
    sa.UniqueConstraint('account_id', 'uidl', name='uq_pop_uidl_account_uidl')
    )
    with op.batch_alter_table('pop_uidl', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pop_uidl_message_pk'), ['message_pk'], unique=False)


def downgrade():
    with op.batch_alter_table('pop_uidl', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pop_uidl_message_pk'))
    op.drop_table('pop_uidl')
    with op.batch_alter_table('pop_fetch_run', schema=None) as batch_op:
        batch_op.drop_index('ix_pop_fetch_run_account_started')
    op.drop_table('pop_fetch_run')
    with op.batch_alter_table('pop_account', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pop_account_user_id'))
        batch_op.drop_index(batch_op.f('ix_pop_account_org_id'))
        batch_op.drop_index('ix_pop_account_due')
    op.drop_table('pop_account')

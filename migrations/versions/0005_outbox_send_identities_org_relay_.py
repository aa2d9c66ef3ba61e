"""outbox, send identities, org relay and daily send counters

Sending keeps one row per outgoing message (its exact bytes are a blob, its Message-ID is
fixed when queued) with one row per envelope recipient, so that a retry only goes to the
recipients still pending; the daily counters are counted once per message.

Revision ID: 0005
Revises: 0007
Create Date: 2026-11-29 11:40:00

"""
from alembic import op
import sqlalchemy as sa



# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('send_identity',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('reply_to', sa.String(length=320), nullable=False),
    sa.Column('is_hosted', sa.Boolean(), nullable=False),
    sa.Column('is_verified', sa.Boolean(), nullable=False),
    sa.Column('verify_token_hash', sa.String(length=64), nullable=False),
    sa.Column('verify_sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verify_attempts', sa.Integer(), nullable=False),
    sa.Column('transport', sa.String(length=8), nullable=False),
    sa.Column('smtp_host', sa.String(length=253), nullable=False),
    sa.Column('smtp_port', sa.Integer(), nullable=False),
    sa.Column('smtp_security', sa.String(length=8), nullable=False),
    sa.Column('smtp_username', sa.String(length=320), nullable=False),
    sa.Column('smtp_password_encrypted', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organization.id'], name=op.f('fk_send_identity_org_id_organization'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_send_identity_user_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_send_identity')),
    sa.UniqueConstraint('user_id', 'email', name='uq_send_identity_user_email')
    )
    with op.batch_alter_table('send_identity', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_send_identity_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_send_identity_user_id'), ['user_id'], unique=False)

    op.create_table('org_relay',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('host', sa.String(length=253), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('security', sa.String(length=8), nullable=False),
    sa.Column('username', sa.String(length=320), nullable=False),
    sa.Column('password_encrypted', sa.Text(), nullable=False),
    sa.Column('envelope_policy', sa.String(length=8), nullable=False),
    sa.Column('envelope_sender', sa.String(length=320), nullable=False),
    sa.Column('daily_limit_user', sa.Integer(), nullable=False),
    sa.Column('daily_limit_org', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organization.id'], name=op.f('fk_org_relay_org_id_organization'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_org_relay')),
    sa.UniqueConstraint('org_id', name=op.f('uq_org_relay_org_id'))
    )

    op.create_table('send_counter',
    sa.Column('scope', sa.String(length=4), nullable=False),
    sa.Column('scope_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'scope_id', 'day', name=op.f('pk_send_counter'))
    )

    op.create_table('outgoing_message',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('identity_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('transport', sa.String(length=8), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('message_id', sa.String(length=998), nullable=False),
    sa.Column('blob_sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('from_email', sa.String(length=320), nullable=False),
    sa.Column('envelope_from', sa.String(length=320), nullable=False),
    sa.Column('file_in_sent', sa.Boolean(), nullable=False),
    sa.Column('counted', sa.Boolean(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error_kind', sa.String(length=16), nullable=False),
    sa.Column('last_error_code', sa.Integer(), nullable=True),
    sa.Column('last_error_text', sa.Text(), nullable=False),
    sa.Column('last_error_message', sa.Text(), nullable=False),
    sa.Column('sent_message_pk', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['blob_sha256'], ['blob.sha256'], name=op.f('fk_outgoing_message_blob_sha256_blob')),
    sa.ForeignKeyConstraint(['identity_id'], ['send_identity.id'], name=op.f('fk_outgoing_message_identity_id_send_identity'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['org_id'], ['organization.id'], name=op.f('fk_outgoing_message_org_id_organization'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sent_message_pk'], ['message.id'], name=op.f('fk_outgoing_message_sent_message_pk_message'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_outgoing_message_user_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outgoing_message'))
    )
    with op.batch_alter_table('outgoing_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outgoing_message_identity_id'), ['identity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outgoing_message_org_id'), ['org_id'], unique=False)
        batch_op.create_index('ix_outgoing_message_state_next', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_outgoing_message_user_created', ['user_id', 'created_at'], unique=False)

    op.create_table('outgoing_recipient',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('outgoing_id', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('code', sa.Integer(), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['outgoing_id'], ['outgoing_message.id'], name=op.f('fk_outgoing_recipient_outgoing_id_outgoing_message'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outgoing_recipient')),
    sa.UniqueConstraint('outgoing_id', 'address', name='uq_outgoing_recipient_outgoing_address')
    )


def downgrade():
    op.drop_table('outgoing_recipient')
    with op.batch_alter_table('outgoing_message', schema=None) as batch_op:
        batch_op.drop_index('ix_outgoing_message_user_created')
        batch_op.drop_index('ix_outgoing_message_state_next')
        batch_op.drop_index(batch_op.f('ix_outgoing_message_org_id'))
        batch_op.drop_index(batch_op.f('ix_outgoing_message_identity_id'))
    op.drop_table('outgoing_message')
    op.drop_table('send_counter')
    op.drop_table('org_relay')
    with op.batch_alter_table('send_identity', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_send_identity_user_id'))
        batch_op.drop_index(batch_op.f('ix_send_identity_org_id'))
    op.drop_table('send_identity')

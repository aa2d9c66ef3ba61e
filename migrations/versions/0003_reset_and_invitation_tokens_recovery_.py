"""Reset and invitation tokens, recovery addresses for self-service password reset

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 11:17:17.811106

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('credential_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by_id'], ['user.id'], name=op.f('fk_credential_token_created_by_id_user'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['org_id'], ['organization.id'], name=op.f('fk_credential_token_org_id_organization'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_credential_token_user_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credential_token')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_credential_token_token_hash'))
    )
    with op.batch_alter_table('credential_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credential_token_org_id'), ['org_id'], unique=False)
        batch_op.create_index('ix_credential_token_user_open', ['user_id', 'used_at'], unique=False)

    op.create_table('recovery_address',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organization.id'], name=op.f('fk_recovery_address_org_id_organization'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_recovery_address_user_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_recovery_address'))
    )
    with op.batch_alter_table('recovery_address', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recovery_address_org_id'), ['org_id'], unique=False)



def downgrade():
    with op.batch_alter_table('recovery_address', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recovery_address_org_id'))

    op.drop_table('recovery_address')
    with op.batch_alter_table('credential_token', schema=None) as batch_op:
        batch_op.drop_index('ix_credential_token_user_open')
        batch_op.drop_index(batch_op.f('ix_credential_token_org_id'))

    op.drop_table('credential_token')

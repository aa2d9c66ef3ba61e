"""Forms of the control panel, one per screen."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, DecimalField, IntegerField, RadioField, SelectChoice, \
    SelectField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

QUOTA_HELP = "In GB (1 GB = 1024³ bytes). Leave empty for the default."


def choices(pairs: list[tuple]) -> list[SelectChoice]:
    """(value, label) pairs as WTForms choices (tuples are deprecated in WTForms 3.3)."""
    return [SelectChoice(value, label) for value, label in pairs]


class UserAddForm(FlaskForm):
    """A new user and how they get their first password."""

    email = StringField("Email address", validators=[DataRequired(), Length(max=320)],
                        description="On one of the organization's domains.")
    display_name = StringField("Display name", validators=[Optional(), Length(max=200)])
    credential = RadioField("First password", default="invite", choices=choices([
        ("invite", "Invitation link (the user chooses their password; valid 7 days)"),
        ("password", "One-time password (the user must change it at first login)")]))
    recovery_email = StringField("Recovery address", validators=[Optional(), Length(max=320)],
                                 description="Outside this organization's mailboxes; "
                                             "\"Forgot password?\" links are mailed there.")
    quota_gb = DecimalField("Quota", places=2, validators=[Optional(), NumberRange(min=0.01)],
                            description=QUOTA_HELP)
    is_admin = BooleanField("Organization admin")
    submit = SubmitField("Add user")


class UserEditForm(FlaskForm):
    """A user's name, role, recovery address and quota."""

    display_name = StringField("Display name", validators=[Optional(), Length(max=200)])
    recovery_email = StringField("Recovery address", validators=[Optional(), Length(max=320)])
    quota_gb = DecimalField("Quota", places=2, validators=[Optional(), NumberRange(min=0.01)],
                            description=QUOTA_HELP)
    allow_below_use = BooleanField("Allow a quota below current use")
    is_admin = BooleanField("Organization admin")
    submit = SubmitField("Save")


class UserDeleteForm(FlaskForm):
    """Confirmation of a deletion, with what becomes of the user's CRM records."""

    crm_records = RadioField("Their CRM records", default="reassign", choices=choices([
        ("reassign", "Give them to another user"), ("delete", "Delete them")]))
    reassign_to = SelectField("Give them to", coerce=int, validate_choice=False)
    confirm_email = StringField("Type the user's address to confirm",
                                validators=[DataRequired(), Length(max=320)])
    submit = SubmitField("Delete user and their mail")


class PasswordResetForm(FlaskForm):
    """How the admin hands the user a way back in."""

    method = RadioField("Method", default="link", choices=choices([
        ("link", "Reset link (single use, valid one hour)"),
        ("password", "One-time password (must be changed at first login)")]))
    mail_link = BooleanField("Also mail the link to the user's recovery address")
    submit = SubmitField("Reset password")


class IpRulesForm(FlaskForm):
    """The allowlist as text: one network per line, a note after '#'."""

    rules = TextAreaField("Allowed networks", validators=[Length(max=20000)],
                          render_kw={"rows": 10, "spellcheck": "false"},
                          description="One IPv4 or IPv6 network per line, e.g. 192.0.2.0/24 or "
                                      "2001:db8::/32; text after # is a note. Empty: no "
                                      "restriction.")
    submit = SubmitField("Save allowed networks")


class DomainAddForm(FlaskForm):
    """A new hosted domain."""

    name = StringField("Domain", validators=[DataRequired(), Length(max=253)],
                       description="e.g. example.com")
    submit = SubmitField("Add domain")


class QuotaForm(FlaskForm):
    """A per-user quota override."""

    quota_gb = DecimalField("Quota (GB)", places=2, validators=[Optional(), NumberRange(min=0.01)])
    allow_below_use = BooleanField("Allow below current use")
    submit = SubmitField("Set")


class AuditFilterForm(FlaskForm):
    """Filters of the audit page (a GET form: no CSRF token needed)."""

    class Meta:
        csrf = False

    action = StringField("Action", validators=[Optional(), Length(max=64)])
    actor = StringField("Who", validators=[Optional(), Length(max=320)])
    target = StringField("Target", validators=[Optional(), Length(max=255)])
    page = IntegerField("Page", default=1, validators=[Optional(), NumberRange(min=1)])
    submit = SubmitField("Filter")

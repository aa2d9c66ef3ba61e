"""Forms of Settings » Send Mail As."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, RadioField, SelectChoice, SelectField, StringField, \
    SubmitField
from wtforms.validators import DataRequired, Email, Length, NumberRange, Optional, Regexp

# A line break in a login would end the protocol line it is sent on. \Z, not $: "$" also
# matches before a final newline.
NO_LINE_BREAKS = r"[^\r\n\x00]*\Z"


class AddIdentityForm(FlaskForm):
    """Add an external address; a code is mailed to it."""

    email = StringField("Address", validators=[DataRequired(), Length(max=320),
                                               Email("Enter an email address.")],
                        render_kw={"placeholder": "you@gmail.com", "autocomplete": "email"})
    display_name = StringField("Name shown to recipients", validators=[Length(max=200)])
    submit = SubmitField("Add and send the code")


class ConfirmIdentityForm(FlaskForm):
    """Enter the code mailed to the address."""

    code = StringField("Confirmation code", validators=[DataRequired(), Length(max=20)],
                       render_kw={"autocomplete": "one-time-code"})
    submit = SubmitField("Confirm")


class EditIdentityForm(FlaskForm):
    """Name, reply-to and transport of one address."""

    display_name = StringField("Name shown to recipients", validators=[Length(max=200)])
    reply_to = StringField("Reply-to address (optional)", validators=[Length(max=320)])
    transport = RadioField("Send through", choices=[
        SelectChoice("relay", "The organization's relay"),
        SelectChoice("smtp", "Another SMTP server (e.g. Gmail's)")], default="relay")
    smtp_host = StringField("SMTP server", validators=[Optional(), Length(max=253)],
                            render_kw={"placeholder": "smtp.gmail.com"})
    smtp_port = IntegerField("Port", default=587,
                             validators=[Optional(), NumberRange(1, 65535, "1 to 65535.")])
    smtp_security = SelectField("Security", choices=[
        SelectChoice("starttls", "STARTTLS (usually port 587)"),
        SelectChoice("ssl", "SSL (usually port 465)"),
        SelectChoice("none", "None (not recommended)")], default="starttls")
    smtp_username = StringField("Username", validators=[
                                    Optional(), Length(max=320),
                                    Regexp(NO_LINE_BREAKS, message="The username must not "
                                                                   "contain line breaks.")],
                                render_kw={"autocomplete": "off"})
    smtp_password = PasswordField(
        "Password", validators=[Optional(), Length(max=1024),
                                Regexp(NO_LINE_BREAKS, message="The password must not contain "
                                                               "line breaks.")],
        render_kw={"autocomplete": "new-password"},
        description="Stored encrypted and never shown again; leave empty to keep the stored "
                    "one while server, port, security and username stay the same. Gmail needs "
                    "an app password.")
    submit = SubmitField("Save")

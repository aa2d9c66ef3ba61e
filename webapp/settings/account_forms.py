"""Forms of Settings » Mail Accounts."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (BooleanField, EmailField, IntegerField, PasswordField, RadioField,
                     SelectField, StringField, SubmitField)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Email, Length, NumberRange, Optional, Regexp

from webapp.services.pop_accounts import BATCH_SIZE_RANGE, DEFAULT_BATCH_SIZE

# POP3 sends USER and PASS as text lines: a CR or LF would end the line and start a command.
# \Z, not $: "$" also matches before a final newline.
NO_LINE_BREAKS = r"[^\r\n\x00]*\Z"

SECURITY_CHOICES = [
    SelectChoice("ssl", "SSL/TLS (recommended, usually port 995)"),
    SelectChoice("starttls", "STARTTLS (usually port 110)"),
    SelectChoice("none", "None: password and mail travel unencrypted"),
]


class PopAccountForm(FlaskForm):
    """Add or change a POP account; on edit a blank password keeps the saved one.

    Only while server, port, security and username stay the same: the services refuse to send
    the saved password anywhere else.
    """

    email = EmailField("Email address", validators=[DataRequired(), Email(), Length(max=320)],
                       description="The address whose mail you want here.")
    display_name = StringField("Display name", validators=[Optional(), Length(max=200)])
    host = StringField("POP server", validators=[DataRequired(), Length(max=255)],
                       description="For example pop.gmail.com or pop.example.com.")
    port = IntegerField("Port", default=995, validators=[DataRequired(), NumberRange(1, 65535)])
    security = SelectField("Security", choices=SECURITY_CHOICES, default="ssl",
                           description="Without security anyone on the way can read your "
                                       "password and your mail.")
    username = StringField("Username", validators=[
                               DataRequired(), Length(max=320),
                               Regexp(NO_LINE_BREAKS, message="The username must not contain "
                                                              "line breaks.")],
                           render_kw={"autocomplete": "off"},
                           description="Usually the full address. Gmail: write recent:you@gmail.com "
                                       "to get the last 30 days, sent mail included.")
    password = PasswordField("Password", validators=[
                                 Length(max=1024),
                                 Regexp(NO_LINE_BREAKS, message="The password must not contain "
                                                                "line breaks.")],
                             render_kw={"autocomplete": "new-password"})
    delete_from_server = RadioField("After fetching", default="keep", choices=[
        SelectChoice("keep", "Leave a copy on the server"),
        SelectChoice("delete", "Delete from the server once it is safely stored here")])
    which = RadioField("Which messages", default="all", choices=[
        SelectChoice("all", "All messages on the server"),
        SelectChoice("new", "Only messages that arrive from now on")])
    batch_size = IntegerField("Messages per batch", default=DEFAULT_BATCH_SIZE,
                              validators=[DataRequired(), NumberRange(*BATCH_SIZE_RANGE)],
                              description="A first import continues batch after batch at once.")
    interval_minutes = IntegerField("Check every (minutes)", default=5,
                                    validators=[DataRequired(), NumberRange(1, 10080)])
    file_sent = BooleanField("File my own sent mail from this account in Sent", default=True,
                             description="Adds a filter: mail from this address goes to Sent, "
                                         "so the CRM counts it as sent.")
    save_anyway = BooleanField("Save anyway, although the connection test failed")
    submit = SubmitField("Save and test the connection")


class ConfirmForm(FlaskForm):
    """An empty form: a CSRF token for a confirmed POST."""

    submit = SubmitField("Delete")

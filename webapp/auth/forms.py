"""Forms of the login screens."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length


class LoginForm(FlaskForm):
    """Email and password."""

    email = StringField("Email address", validators=[DataRequired(), Length(max=320)],
                        render_kw={"autocomplete": "username", "autofocus": True})
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)],
                             render_kw={"autocomplete": "current-password"})
    remember = BooleanField("Keep me signed in on this device")
    submit = SubmitField("Log in")


class EmptyForm(FlaskForm):
    """A form with only a CSRF token, for one-button POST actions."""

    submit = SubmitField("Submit")

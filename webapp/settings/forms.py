"""Forms of the settings screens."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length


class PasswordChangeForm(FlaskForm):
    """Change one's own password."""

    current_password = PasswordField("Current password", validators=[DataRequired()],
                                     render_kw={"autocomplete": "current-password"})
    new_password = PasswordField("New password", validators=[DataRequired(), Length(max=1024)],
                                 render_kw={"autocomplete": "new-password"},
                                 description="At least 10 characters; not a common password.")
    confirm = PasswordField("Repeat the new password",
                            validators=[DataRequired(), EqualTo("new_password",
                                                                "The two passwords differ.")],
                            render_kw={"autocomplete": "new-password"})
    submit = SubmitField("Change password")

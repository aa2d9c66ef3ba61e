"""Forms of the webmail screens (folders, bulk actions, message actions)."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import SelectField, SelectMultipleField, StringField, SubmitField
from wtforms.validators import AnyOf, DataRequired, Length, Optional

from webapp.services.mailbox import FOLDER_NAME_MAX

BULK_ACTIONS = ("read", "unread", "flag", "unflag", "move", "delete")
MESSAGE_ACTIONS = ("unread", "flag", "unflag", "move", "delete")


class FolderForm(FlaskForm):
    """Create or rename a custom folder."""

    name = StringField("Folder name", validators=[DataRequired("Give the folder a name."),
                                                  Length(max=FOLDER_NAME_MAX)],
                       render_kw={"autocomplete": "off", "maxlength": FOLDER_NAME_MAX})
    submit = SubmitField("Save")


class ConfirmForm(FlaskForm):
    """A one-button form: the confirmation step of a destructive action (CSRF included)."""

    submit = SubmitField("Confirm")


class BulkActionForm(FlaskForm):
    """The checkboxes of a message list and the button pressed (one form, one CSRF token)."""

    # Ownership is checked by the service (the user's id is in every query), not by choices.
    ids = SelectMultipleField("Messages", coerce=int, validate_choice=False)
    action = StringField("Action", validators=[DataRequired(), AnyOf(BULK_ACTIONS)])
    target_folder = SelectField("Move to", coerce=int, validate_choice=False,
                                validators=[Optional()])

    def validate(self, extra_validators=None) -> bool:
        """Move needs a target folder; every action needs at least one message."""
        if not super().validate(extra_validators):
            return False
        if not self.ids.data:
            self.ids.errors.append("Select at least one message.")
            return False
        if self.action.data == "move" and not self.target_folder.data:
            self.target_folder.errors.append("Choose the folder to move to.")
            return False
        return True


class MessageActionForm(FlaskForm):
    """The buttons of the message view (flag, unread, move, delete)."""

    action = StringField("Action", validators=[DataRequired(), AnyOf(MESSAGE_ACTIONS)])
    target_folder = SelectField("Move to", coerce=int, validate_choice=False,
                                validators=[Optional()])

    def validate(self, extra_validators=None) -> bool:
        """Move needs a target folder."""
        if not super().validate(extra_validators):
            return False
        if self.action.data == "move" and not self.target_folder.data:
            self.target_folder.errors.append("Choose the folder to move to.")
            return False
        return True

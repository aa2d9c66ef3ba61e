"""Forms of the CRM screens: records, activities, conversion, CSV import."""
from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import DateField, DateTimeLocalField, DecimalField, HiddenField, SelectField, \
    StringField, SubmitField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError

from webapp.models.crm import ACTIVITY_KINDS, LEAD_STATUSES, POTENTIAL_STAGES, TASK_STATUSES
from webapp.services.crm import CrmError, parse_address_lines, parse_typed_address


def _label(value: str) -> str:
    return value.replace("_", " ").capitalize()


def choices(pairs) -> list[SelectChoice]:
    """Select options from (value, label) pairs (WTForms 3.3 deprecates plain tuples)."""
    return [SelectChoice(value, label) for value, label in pairs]


class ContactForm(FlaskForm):
    """Create or edit a contact."""

    name = StringField("Name", validators=[DataRequired("Give the contact a name."),
                                           Length(max=200)])
    emails = TextAreaField("Email addresses", validators=[Optional(), Length(max=8000)],
                           description="One per line; the first is the main address. Mail "
                                       "to or from any of them shows on the contact.",
                           render_kw={"rows": 3})
    phone = StringField("Phone", validators=[Optional(), Length(max=64)])
    company = StringField("Company", validators=[Optional(), Length(max=200)])
    submit = SubmitField("Save contact")

    def validate_emails(self, field) -> None:
        """Every line must be an address (kept normalized in `parsed_emails`)."""
        try:
            self.parsed_emails = parse_address_lines(field.data or "")
        except CrmError as exc:
            raise ValidationError(str(exc)) from None


class LeadForm(FlaskForm):
    """Create or edit a lead."""

    name = StringField("Name", validators=[DataRequired("Give the lead a name."),
                                           Length(max=200)])
    email = StringField("Email address", validators=[Optional(), Length(max=320)])
    phone = StringField("Phone", validators=[Optional(), Length(max=64)])
    company = StringField("Company", validators=[Optional(), Length(max=200)])
    status = SelectField("Status", default="new",
                         choices=choices((s, _label(s)) for s in LEAD_STATUSES if s != "converted"))
    source = StringField("Source", validators=[Optional(), Length(max=100)],
                         description="Where the lead came from (web form, fair, referral…).")
    submit = SubmitField("Save lead")

    def validate_email(self, field) -> None:
        """An address when given (kept normalized in `parsed_email`)."""
        self.parsed_email = ""
        if (field.data or "").strip():
            try:
                self.parsed_email = parse_typed_address(field.data)
            except CrmError as exc:
                raise ValidationError(str(exc)) from None


class PotentialForm(FlaskForm):
    """Create or edit a potential."""

    name = StringField("Name", validators=[DataRequired("Give the potential a name."),
                                           Length(max=200)])
    amount = DecimalField("Amount", places=2, validators=[Optional(), NumberRange(min=0,
                          max=999_999_999_999)])
    stage = SelectField("Stage", choices=choices((s, _label(s)) for s in POTENTIAL_STAGES),
                        default="prospecting")
    closing_date = DateField("Closing date", validators=[Optional()])
    contact_id = SelectField("Contact", coerce=int, default=0,
                             description="Mail with the contact shows on the potential.")
    submit = SubmitField("Save potential")


class ActivityForm(FlaskForm):
    """Add or edit a task, an event or a note (the kind decides which fields count)."""

    kind = SelectField("Kind", choices=choices((k, _label(k)) for k in ACTIVITY_KINDS),
                       default="note")
    title = StringField("Title", validators=[DataRequired("Give it a title."), Length(max=300)])
    notes = TextAreaField("Notes", validators=[Optional(), Length(max=20000)],
                          render_kw={"rows": 4})
    due_date = DateField("Due date (tasks)", validators=[Optional()])
    status = SelectField("Status (tasks)", choices=choices((s, _label(s)) for s in TASK_STATUSES),
                         default="open")
    starts_at = DateTimeLocalField("Starts (events, UTC)", format="%Y-%m-%dT%H:%M",
                                   validators=[Optional()])
    ends_at = DateTimeLocalField("Ends (events, UTC)", format="%Y-%m-%dT%H:%M",
                                 validators=[Optional()])
    message_id = HiddenField()
    next = HiddenField()
    submit = SubmitField("Save")

    def validate(self, extra_validators=None) -> bool:
        """An event needs a start, and cannot end before it starts."""
        if not super().validate(extra_validators):
            return False
        if self.kind.data == "event":
            if self.starts_at.data is None:
                self.starts_at.errors.append("An event needs a start.")
                return False
            if self.ends_at.data is not None and self.ends_at.data < self.starts_at.data:
                self.ends_at.errors.append("An event cannot end before it starts.")
                return False
        return True


class ConvertLeadForm(FlaskForm):
    """Convert a lead into a contact and, when a name is given, a potential."""

    potential_name = StringField("Potential name (optional)",
                                 validators=[Optional(), Length(max=200)],
                                 description="Leave empty to create only the contact.")
    amount = DecimalField("Amount", places=2, validators=[Optional(), NumberRange(min=0)])
    closing_date = DateField("Closing date", validators=[Optional()])
    submit = SubmitField("Convert")


class ConfirmForm(FlaskForm):
    """A one-button form: the confirmation step of a destructive action (CSRF included)."""

    submit = SubmitField("Delete")


class ImportUploadForm(FlaskForm):
    """Upload a CSV file to preview."""

    file = FileField("CSV file", validators=[FileRequired("Choose a CSV file.")],
                     description="UTF-8, first row with column names. Nothing is saved "
                                 "before you confirm the preview.")
    submit = SubmitField("Preview")


class ImportConfirmForm(FlaskForm):
    """Confirm an import that previewed without errors (the text travels back with it)."""

    content = HiddenField(validators=[DataRequired()])
    submit = SubmitField("Import")

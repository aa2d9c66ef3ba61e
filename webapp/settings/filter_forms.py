"""Forms of Settings » Filters: one filter with rows of conditions and actions."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (BooleanField, FieldList, Form, FormField, SelectChoice, SelectField,
                     StringField, SubmitField)
from wtforms.validators import InputRequired, Length, ValidationError

from webapp.services.filters import (ACTION_LABELS, FIELD_LABELS, OPERATOR_LABELS, ActionSpec,
                                     ConditionSpec, FilterError, FilterSpec, compile_regex)
from webapp.services.mime import normalize_address

NO_FOLDER = 0


def _choices(pairs) -> list[SelectChoice]:
    return [SelectChoice(value, label) for value, label in pairs]


class ConditionForm(Form):
    """One condition row (a sub-form: the filter form carries the CSRF token)."""

    field = SelectField("Field", choices=_choices(FIELD_LABELS.items()))
    header_name = StringField("Header name", validators=[Length(max=100)],
                              description="Only for “Header named…”, e.g. List-Id.")
    operator = SelectField("Operator", choices=_choices(OPERATOR_LABELS.items()))
    value = StringField("Value", validators=[Length(max=1000)])
    case_sensitive = BooleanField("Match case")

    def validate_header_name(self, field):
        """A named-header condition needs the header's name (letters, digits, dashes)."""
        if self.field.data == "header":
            name = (field.data or "").strip()
            if not name:
                raise ValidationError("Give the header's name, e.g. List-Id.")
            if any(c.isspace() or c == ":" or not c.isprintable() for c in name):
                raise ValidationError("A header name has no spaces or colons.")

    def validate_value(self, field):
        """No empty values; a regular expression must compile (the compiler's words shown)."""
        if not (field.data or "").strip():
            raise ValidationError("Enter the text this condition looks for.")
        if self.operator.data == "regex":
            try:
                compile_regex(field.data, self.case_sensitive.data)
            except FilterError as exc:
                raise ValidationError(str(exc)) from exc


class ActionForm(Form):
    """One action row; the folder list is filled per request with the user's folders."""

    kind = SelectField("Action", choices=_choices([("", "— choose an action —"),
                                                   *ACTION_LABELS.items()]))
    folder_id = SelectField("Folder", coerce=int, choices=[], validate_choice=False)
    argument = StringField("Label or address", validators=[Length(max=320)],
                           description="The label to add, or the address to forward to.")

    def validate_kind(self, field):
        """Every row does something: a filter without an action is refused."""
        if not field.data:
            raise ValidationError("Choose an action: a filter needs at least one.")

    def validate_folder_id(self, field):
        """A move needs a folder that (still) exists."""
        if self.kind.data != "move":
            return
        valid = {choice.value for choice in field.choices if choice.value != NO_FOLDER}
        if field.data == NO_FOLDER:
            raise ValidationError("Choose the folder to move to.")
        if field.data not in valid:
            raise ValidationError("That folder no longer exists; choose another.")

    def validate_argument(self, field):
        """Labels need a name, forwards one address."""
        text = (field.data or "").strip()
        if self.kind.data == "label" and not text:
            raise ValidationError("Give the label a name.")
        if self.kind.data == "forward" and (not text or "," in text
                                            or normalize_address(text) is None):
            raise ValidationError("Give one email address to forward to.")


class FilterForm(FlaskForm):
    """Create or edit a filter; "add" buttons re-render the form with one more row."""

    name = StringField("Name", validators=[InputRequired("Give the filter a name."),
                                           Length(max=200)])
    match = SelectField("Apply when", choices=_choices([("all", "all conditions match"),
                                                        ("any", "any condition matches")]))
    enabled = BooleanField("On", default=True)
    conditions = FieldList(FormField(ConditionForm), min_entries=1, max_entries=50)
    actions = FieldList(FormField(ActionForm), min_entries=1, max_entries=20)
    add_condition = SubmitField("Add condition")
    add_action = SubmitField("Add action")
    save = SubmitField("Save filter")

    def set_folder_choices(self, folders: list[tuple[int, str]]) -> None:
        """Offer the user's folders (Sent included) in every action row."""
        for entry in self.actions:
            entry.form.folder_id.choices = _choices([(NO_FOLDER, "— choose a folder —"), *folders])

    def to_spec(self) -> FilterSpec:
        """The filter as plain values for the service."""
        return FilterSpec(
            name=self.name.data.strip(), match_all=self.match.data == "all",
            enabled=bool(self.enabled.data),
            conditions=[ConditionSpec(c.field.data, c.operator.data, c.value.data,
                                      (c.header_name.data or "").strip(),
                                      bool(c.case_sensitive.data))
                        for c in (e.form for e in self.conditions)],
            actions=[ActionSpec(a.kind.data, a.folder_id.data or None,
                                (a.argument.data or "").strip())
                     for a in (e.form for e in self.actions)])

    def fill_from(self, spec: FilterSpec) -> None:
        """Show a saved filter (on GET)."""
        self.name.data, self.enabled.data = spec.name, spec.enabled
        self.match.data = "all" if spec.match_all else "any"
        while len(self.conditions.entries):
            self.conditions.pop_entry()
        while len(self.actions.entries):
            self.actions.pop_entry()
        for c in spec.conditions:
            self.conditions.append_entry({"field": c.field, "header_name": c.header_name,
                                          "operator": c.operator, "value": c.value,
                                          "case_sensitive": c.case_sensitive})
        for a in spec.actions:
            self.actions.append_entry({"kind": a.kind, "folder_id": a.folder_id or NO_FOLDER,
                                       "argument": a.argument})


class ConfirmForm(FlaskForm):
    """An empty form: a CSRF token for one-button POST actions (delete, apply)."""

    submit = SubmitField("Confirm")

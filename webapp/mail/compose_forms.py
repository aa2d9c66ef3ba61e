"""The compose form: every header field is checked for line breaks and strict addresses."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import HiddenField, MultipleFileField, SelectField, StringField, SubmitField, \
    TextAreaField, ValidationError
from wtforms.validators import Length

from webapp.services import compose


def _no_line_breaks(label: str):
    def check(_form, field) -> None:
        if field.data and any(c in field.data for c in "\r\n\x00"):
            raise ValidationError(f"{label} must not contain line breaks.")
    return check


def _address_list(label: str):
    def check(_form, field) -> None:
        try:
            compose.parse_address_list(field.data or "", field=label)
        except compose.ComposeError as error:
            raise ValidationError(str(error)) from None
    return check


class ComposeForm(FlaskForm):
    """Write a message: From, recipients, subject, text, attachments; send or save a draft."""

    from_identity = SelectField("From", coerce=int, validate_choice=True)
    to = StringField("To", validators=[Length(max=20000), _address_list("To")],
                     render_kw={"autocomplete": "off", "list": "address-suggestions",
                                "placeholder": "name@example.com, Ann <ann@example.org>"})
    cc = StringField("Cc", validators=[Length(max=20000), _address_list("Cc")],
                     render_kw={"autocomplete": "off", "list": "address-suggestions"})
    bcc = StringField("Bcc", validators=[Length(max=20000), _address_list("Bcc")],
                      render_kw={"autocomplete": "off", "list": "address-suggestions"})
    subject = StringField("Subject", validators=[Length(max=998), _no_line_breaks("Subject")])
    body = TextAreaField("Message", validators=[Length(max=5_000_000)],
                         render_kw={"rows": 16})
    attachments = MultipleFileField("Attach files")
    in_reply_to = HiddenField(validators=[Length(max=998), _no_line_breaks("In-Reply-To")])
    references = HiddenField(validators=[Length(max=20000), _no_line_breaks("References")])
    draft_id = HiddenField()
    # The stored message whose attachments may be kept (the forwarded one, or the draft).
    attachment_source = HiddenField()
    send = SubmitField("Send")
    save_draft = SubmitField("Save draft")

    def recipients_given(self) -> bool:
        """Whether any of To, Cc, Bcc holds something."""
        return any((f.data or "").strip() for f in (self.to, self.cc, self.bcc))

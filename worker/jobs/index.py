"""The index job: full parse of newly delivered messages for search and snippets."""
from __future__ import annotations

import logging
import re

from flask import current_app
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Message, MessageText
from webapp.services import blobs
from webapp.services.mime import (MIME_SEARCH_TEXT_CHARS, ParsedMessage, parse_message,
                                  search_text_of)

log = logging.getLogger("skydesk.index")
BATCH = 200
_ADDRESS_PUNCTUATION = re.compile(r"[@.+_-]+")


def search_document(parsed: ParsedMessage) -> str:
    """The message's search text, plus its addresses split into words.

    PostgreSQL's parser keeps bob@elsewhere.example as one token, so "elsewhere" would
    not find it; the split copy makes every dialect find each part.
    """
    split = " ".join(_ADDRESS_PUNCTUATION.sub(" ", a.email) for a in parsed.envelope.addresses)
    return f"{split}\n{search_text_of(parsed)}"[:MIME_SEARCH_TEXT_CHARS]


def index_pending(user_id: int) -> int:
    """Index every not-yet-indexed message of the user, in batches; return how many.

    Safe to run twice or concurrently: a message is indexed once (its text row is keyed
    by the message), and each batch commits on its own.
    """
    store = blobs.get_store(current_app.config["BLOB_DIR"])
    done = 0
    while True:
        batch = db.session.scalars(
            select(Message).where(Message.user_id == user_id, Message.indexed.is_(False))
            .order_by(Message.id).limit(BATCH)).all()
        if not batch:
            return done
        for message in batch:
            try:
                raw = store.get(message.blob_sha256)
            except blobs.BlobMissingError:
                log.error("message %s: blob %s missing", message.id, message.blob_sha256)
                message.indexed = True
                continue
            parsed = parse_message(raw)
            message.snippet = parsed.snippet[:300]
            if any(p.disposition == "attachment" or (p.filename and not p.is_inline)
                   for p in parsed.parts):
                message.has_attachments = True
            if db.session.get(MessageText, message.id) is None:
                db.session.add(MessageText(message_pk=message.id, user_id=user_id,
                                           body=search_document(parsed)))
            message.indexed = True
            done += 1
        db.session.commit()

"""Full-text search over a user's messages: SQLite FTS5 or PostgreSQL text search."""
from __future__ import annotations

import re

from sqlalchemy import Select, func, literal_column, select, text
from sqlalchemy.orm import Session

from webapp.models import Message, MessageText

_WORD = re.compile(r"\w+", re.UNICODE)


def terms(query: str) -> list[str]:
    """The words of a search box query (punctuation is not syntax here)."""
    return _WORD.findall(query or "")[:20]


def matching_ids(session: Session, user_id: int, query: str) -> Select | None:
    """A SELECT of the ids of the user's indexed messages that contain every word."""
    words = terms(query)
    if not words:
        return None
    if session.get_bind().dialect.name == "sqlite":
        # Every word quoted (so FTS5 operators in user input are plain text), as a prefix.
        match = " ".join('"' + w.replace('"', '""') + '"*' for w in words)
        fts = select(literal_column("rowid")).select_from(text("message_fts")).where(
            text("message_fts MATCH :match")).params(match=match)
        return select(MessageText.message_pk).where(MessageText.user_id == user_id,
                                                    MessageText.message_pk.in_(fts))
    tsquery = func.to_tsquery("simple", " & ".join(f"{w}:*" for w in
                                                   (re.sub(r"[^\w]", "", w) for w in words) if w))
    return select(MessageText.message_pk).where(
        MessageText.user_id == user_id,
        func.to_tsvector("simple", MessageText.body).op("@@")(tsquery))


def search(session: Session, user_id: int, query: str, folder_id: int | None = None,
           limit: int = 50) -> list[Message]:
    """The newest messages of the user matching the query (optionally within one folder)."""
    ids = matching_ids(session, user_id, query)
    if ids is None:
        return []
    stmt = select(Message).where(Message.user_id == user_id, Message.id.in_(ids))
    if folder_id is not None:
        stmt = stmt.where(Message.folder_id == folder_id)
    return list(session.scalars(stmt.order_by(Message.sort_date.desc(), Message.id.desc())
                                .limit(limit)))

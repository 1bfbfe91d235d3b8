"""Whose work is this? Ids resolved within what one owner may see, for the API and the web view.

A token that is not an admin's sees only its owner's submissions and their jobs, and an id of
anyone else's is answered as if it did not exist (404): nothing tells it apart from an id nobody
has. So a prefix is matched among the owner's ids only (``storage.ids.resolve`` with ``owner``):
other owners' ids are never named as candidates of an ambiguous prefix.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from storage.ids import Kind, resolve


def resolve_owned(session: Session, text: str, kind: Kind, owner: str | None) -> str | None:
    """The full id of the ``kind`` that ``text`` (a whole id or a unique prefix of 4+ hex
    characters) names among ``owner``'s (everyone's when None); None if there is none.
    ``AmbiguousId`` names the candidates, all of them the owner's; ``UserError`` for text that
    cannot be an id."""
    match = resolve(session, text, kinds=(kind,), owner=owner)
    return match.id if match else None

"""Bearer tokens of the HTTP API and the web view: made, listed, revoked and checked here.

A token reads ``lf_<id>_<secret>``: ``id`` is 12 random hex digits, public (``tokens list``
shows it, ``tokens revoke`` takes it, logs may name it), ``secret`` is 32 random bytes in
URL-safe base64. Only the SHA-256 of the whole token is stored: a copy of the database gives no
usable token, and 256 random bits need no slow hash (there is nothing to guess a password from).
A presented token is found by its id and its hash compared with ``hmac.compare_digest``, so the
comparison takes the same time wherever the first wrong byte is. Tokens are never logged: what
this module hands out is the ``ApiToken`` row, which holds no secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.errors import UserError
from core.jobspec import check_owner
from storage.models import ApiToken, utcnow

TOKEN_PREFIX = "lf_"
ID_HEX_DIGITS = 12
SECRET_BYTES = 32
_TOKEN = re.compile(rf"{TOKEN_PREFIX}([0-9a-f]{{{ID_HEX_DIGITS}}})_([A-Za-z0-9_-]{{43}})")
_ID = re.compile(rf"(?:{TOKEN_PREFIX})?([0-9a-f]{{{ID_HEX_DIGITS}}})")


class UnknownToken(UserError):
    """No token has the id given to ``tokens revoke``."""


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: the owner its token names, whether it sees every owner's work,
    and its quotas. Built from a token row (``caller_of``) or, for an API open on loopback with
    no token made yet, for the local operator."""

    owner: str
    admin: bool
    token_id: str | None = None
    quota_queued: int | None = None
    quota_daily_units: int | None = None

    @property
    def label(self) -> str:
        """How logs and messages name the caller: the token's public id, never its secret."""
        return f"{TOKEN_PREFIX}{self.token_id}" if self.token_id else "the local operator"

    def sees(self, owner: str) -> bool:
        """Whether this caller may see (and cancel) work of ``owner``."""
        return self.admin or owner == self.owner


def caller_of(token: ApiToken) -> Caller:
    return Caller(
        owner=token.owner,
        admin=token.admin,
        token_id=token.id,
        quota_queued=token.quota_queued,
        quota_daily_units=token.quota_daily_units,
    )


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_token(text: str) -> bool:
    """Whether ``text`` has the shape of one of our tokens (a UI token of ``openssl rand``
    does not)."""
    return _TOKEN.fullmatch(text) is not None


def create_token(
    session: Session,
    *,
    owner: str,
    admin: bool = False,
    quota_queued: int | None = None,
    quota_daily_units: int | None = None,
    expires_at: datetime | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Store a new token's hash; returns its row and the token itself, which nothing keeps: the
    caller shows it once."""
    check_owner(owner)
    quotas = (("--quota-queued", quota_queued), ("--quota-daily-images", quota_daily_units))
    for name, value in quotas:
        if value is not None and value < 0:
            raise UserError(f"{name} {value} is negative; give 0 or more, or leave it out")
    if note is not None and len(note) > 255:
        raise UserError(f"the note has {len(note)} characters; the limit is 255")
    now = now or utcnow()
    if expires_at is not None and expires_at <= now:
        raise UserError(f"the expiry {expires_at.isoformat()} is in the past; give a later one")
    token_id = secrets.token_hex(ID_HEX_DIGITS // 2)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiToken(
        id=token_id,
        secret_sha256=digest(token),
        owner=owner,
        admin=admin,
        quota_queued=quota_queued,
        quota_daily_units=quota_daily_units,
        note=note,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, token


def verify_token(
    session: Session, presented: str, *, now: datetime | None = None
) -> ApiToken | None:
    """The live (not revoked, not expired) token that ``presented`` is, or None."""
    match = _TOKEN.fullmatch(presented)
    if match is None:
        return None
    row = session.get(ApiToken, match.group(1))
    if row is None or not hmac.compare_digest(row.secret_sha256, digest(presented)):
        return None
    now = now or utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row


def list_tokens(session: Session, *, include_revoked: bool = False) -> Sequence[ApiToken]:
    """Tokens by owner and creation; revoked ones only if asked."""
    statement = select(ApiToken).order_by(ApiToken.owner, ApiToken.created_at, ApiToken.id)
    if not include_revoked:
        statement = statement.where(ApiToken.revoked_at.is_(None))
    return list(session.scalars(statement))


def revoke_token(session: Session, identifier: str, *, now: datetime | None = None) -> ApiToken:
    """Revoke the token whose id is ``identifier`` (``lf_<id>``, the bare id, or the whole
    token); it stops working at once. Revoking a revoked token changes nothing."""
    whole = _TOKEN.fullmatch(identifier.strip())
    match = whole or _ID.fullmatch(identifier.strip())
    row = session.get(ApiToken, match.group(1)) if match else None
    if row is None:
        raise UnknownToken(
            f"no token has id {identifier[:40]!r}; `loopfree tokens list` shows the ids "
            f"({TOKEN_PREFIX} and {ID_HEX_DIGITS} hex digits)"
        )
    session.execute(
        update(ApiToken)
        .where(ApiToken.id == row.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    session.refresh(row)
    return row


def any_token(session: Session) -> bool:
    """Whether any token was ever made (revoked ones count): from then on every request to the
    API must carry one."""
    return session.scalar(select(ApiToken.id).limit(1)) is not None


COOKIE_MESSAGE = b"loopfree-ui-cookie"


def cookie_proof(token: ApiToken) -> str:
    """What the web view's cookie holds for a token: ``<id>.<HMAC keyed by its stored hash>``.
    Checking it needs the stored hash; it is useless as a bearer token, and dies with the token
    (revoked, expired or deleted)."""
    proof = hmac.new(token.secret_sha256.encode(), COOKIE_MESSAGE, hashlib.sha256).hexdigest()
    return f"{token.id}.{proof}"


def verify_cookie(session: Session, value: str, *, now: datetime | None = None) -> ApiToken | None:
    """The live token a ``cookie_proof`` value stands for, or None."""
    token_id, _, proof = value.partition(".")
    if not re.fullmatch(f"[0-9a-f]{{{ID_HEX_DIGITS}}}", token_id):
        return None
    row = session.get(ApiToken, token_id)
    if row is None or not hmac.compare_digest(cookie_proof(row), value):
        return None
    now = now or utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row

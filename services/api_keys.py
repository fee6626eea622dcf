"""API keys: made and revoked on the command line, checked on every request.

A key is 32 random bytes, so only its SHA-256 is stored. Slow password hashes (bcrypt,
argon2) make guessing a low-entropy password from a stolen hash expensive; nobody can
search 2^256 keys however fast the hash is, and a fast hash keeps checking a key a
dictionary lookup instead of ~100 ms of CPU per request.

The key's name is who the caller is: it owns the conversations made with the key, so a
key can be replaced (revoke, then create under the same name) without losing them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from models.db import Database
from models.entities import ApiKey, Conversation, utcnow
from models.key_changes import KeyWatch, announce
from services.errors import InvalidRequest, NotFound
from services.unit_of_work import UnitOfWork, unavailable

KEY_PREFIX = "gpa_"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewKey:
    name: str
    key: str
    adopted: int
    """Conversations of the anonymous caller handed to this name."""


class ApiKeys:
    """Managing keys (the `keys` commands)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str, *, adopt_anonymous: bool = False) -> NewKey:
        """A new key for `name`; with `adopt_anonymous`, the conversations made without a key
        become `name`'s (they are invisible to every key otherwise)."""
        if not NAME.fullmatch(name):
            raise InvalidRequest(
                "A key name is 1 to 64 letters, digits or . _ @ -, starting with a letter or digit."
            )
        key = new_key()
        with UnitOfWork(self._db) as uow:
            uow.session.add(ApiKey(name=name, key_hash=key_hash(key), created_at=utcnow()))
            try:
                uow.session.flush()
            except IntegrityError as error:
                raise InvalidRequest(
                    f"'{name}' already has a key; revoke it first (keys revoke {name})."
                ) from error
            adopted = 0
            if adopt_anonymous:
                moved = uow.session.execute(
                    update(Conversation).where(Conversation.owner == "").values(owner=name)
                )
                adopted = moved.rowcount  # type: ignore[attr-defined]
            announce(uow.session)
            uow.commit()
        return NewKey(name, key, adopted)

    def revoke(self, name: str) -> None:
        with UnitOfWork(self._db) as uow:
            revoked = uow.session.execute(
                update(ApiKey)
                .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            if revoked.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(f"'{name}' has no key to revoke.")
            announce(uow.session)
            uow.commit()

    def list(self) -> list[KeyInfo]:
        """Every key ever made, revoked ones included, by name and age."""
        with UnitOfWork(self._db) as uow:
            rows = uow.session.execute(
                select(ApiKey.name, ApiKey.created_at, ApiKey.revoked_at).order_by(
                    ApiKey.name, ApiKey.created_at
                )
            ).all()
        return [KeyInfo(*row) for row in rows]


class KeyRing:
    """Which keys are valid now: a copy of the unrevoked keys, reloaded whenever they change.

    Before each use the copy is checked against the key generation (`KeyWatch`: one tiny
    read, see `models/key_changes.py`), so a key made or revoked by any process counts on
    the very next request in every process. An unknown key is answered from the copy, so
    guessing keys costs the database no more than a valid key does. A request that finds
    the copy stale waits for the one reload rather than use the old copy.
    """

    def __init__(self, db: Database, watch: KeyWatch) -> None:
        self._db = db
        self._watch = watch
        self._copy: tuple[int, dict[str, str]] | None = None
        """The generation read before the keys were loaded, and the keys (hash: name)."""
        self._lock = threading.Lock()

    def any(self) -> bool:
        """True while at least one key is valid: then every request needs one."""
        return bool(self._current())

    def owner_of(self, key: str) -> str | None:
        """The name of a valid key, None for an unknown or revoked one."""
        return self._current().get(key_hash(key))

    def _current(self) -> dict[str, str]:
        try:
            generation = self._watch.generation()
        except SQLAlchemyError as error:  # the same rule as in every unit of work
            raise unavailable(error) or error from error
        copy = self._copy
        if copy is not None and copy[0] >= generation:
            return copy[1]
        with self._lock:
            if self._copy is None or self._copy[0] < generation:
                self._copy = (generation, self._load())  # loaded after `generation` was read
            return self._copy[1]

    def _load(self) -> dict[str, str]:
        with UnitOfWork(self._db) as uow:
            rows = uow.session.execute(
                select(ApiKey.key_hash, ApiKey.name).where(ApiKey.revoked_at.is_(None))
            ).all()
        return {digest: name for digest, name in rows}

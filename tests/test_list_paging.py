"""Keyset paging with `after` agrees with `offset`, ties on the update time included; pages
past an offset (read through the index first) walk the same order as one whole page."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient

from models.entities import Conversation
from services.unit_of_work import UnitOfWork
from tests.helpers import ok, post


def store_with_ties(app: Flask) -> int:
    """Eight conversations, five of them updated at the same moment; returns how many."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    times = [moment] * 5 + [moment - timedelta(seconds=1)] * 2 + [moment + timedelta(seconds=1)]
    with UnitOfWork(app.services.database) as uow:
        uow.session.add_all(
            Conversation(id=uuid.uuid4(), title=f"c{n}", created_at=at, updated_at=at)
            for n, at in enumerate(times)
        )
        uow.commit()
    return len(times)


def test_after_cursor_walks_ties_in_id_order_like_offset(app: Flask, client: FlaskClient) -> None:
    stored = store_with_ties(app)
    by_offset = [c["id"] for c in ok(post(client, "conversation", {"limit": 100}))]
    by_keyset: list[str] = []
    after: str | None = None
    for _ in range(stored):
        body = {"limit": 3, **({"after": after} if after else {})}
        page = [c["id"] for c in ok(post(client, "conversation", body))]
        if not page:
            break
        by_keyset += page
        after = page[-1]
    assert len(by_offset) == stored
    assert by_keyset == by_offset


def test_offset_pages_walk_ties_in_the_order_of_one_page(app: Flask, client: FlaskClient) -> None:
    stored = store_with_ties(app)
    whole = ok(post(client, "conversation", {"limit": 100}))
    by_offset = [
        conversation
        for offset in range(0, stored, 3)
        for conversation in ok(post(client, "conversation", {"limit": 3, "offset": offset}))
    ]
    assert len(whole) == stored
    assert by_offset == whole  # titles and times too, not only the ids
    past_cursor = ok(post(client, "conversation", {"limit": 3, "offset": 2, "after": whole[1]["id"]}))
    assert past_cursor == whole[4:7]

"""Keyset paging with `after` agrees with `offset`, ties on the update time included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient

from models.entities import Conversation
from services.unit_of_work import UnitOfWork
from tests.helpers import ok, post


def test_after_cursor_walks_ties_in_id_order_like_offset(app: Flask, client: FlaskClient) -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    times = [moment] * 5 + [moment - timedelta(seconds=1)] * 2 + [moment + timedelta(seconds=1)]
    with UnitOfWork(app.services.database) as uow:
        uow.session.add_all(
            Conversation(id=uuid.uuid4(), title=f"c{n}", created_at=at, updated_at=at)
            for n, at in enumerate(times)
        )
        uow.commit()
    by_offset = [c["id"] for c in ok(post(client, "conversation", {"limit": 100}))]
    by_keyset: list[str] = []
    after: str | None = None
    for _ in range(len(times)):
        body = {"limit": 3, **({"after": after} if after else {})}
        page = [c["id"] for c in ok(post(client, "conversation", body))]
        if not page:
            break
        by_keyset += page
        after = page[-1]
    assert len(by_offset) == len(times)
    assert by_keyset == by_offset

"""The service tier: asking and conversations straight through the services, with an
in-process provider, on SQLite and PostgreSQL (no Flask, no HTTP)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from models.db import Database
from models.entities import Conversation, Message
from services.asking import INTERRUPTED, Answer, AskService, Question
from services.conversations import ConversationService
from services.errors import ConversationNotFound, DatabaseUnavailable, ParentNotFound, UpstreamError
from services.metrics import Metrics
from services.providers.base import ReplyRequest
from services.titles import TitleWriter
from services.unit_of_work import UnitOfWork
from tests.helpers import wait_until
from tests.scripted_provider import Scripted, ScriptedProvider


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
def titles(db: Database, provider: ScriptedProvider) -> Iterator[TitleWriter]:
    writer = TitleWriter(db, provider, enabled=False)
    yield writer
    writer.close()


@pytest.fixture
def asking(db: Database, provider: ScriptedProvider, titles: TitleWriter) -> AskService:
    return AskService(db, provider, metrics=Metrics(), titles=titles, system_prompt="Be brief.")


@pytest.fixture
def conversations(db: Database, provider: ScriptedProvider) -> ConversationService:
    return ConversationService(db, provider)


def messages_of(db: Database, conversation_id: uuid.UUID) -> list[Any]:
    with UnitOfWork(db) as uow:
        return list(uow.conversations.messages(conversation_id))


def test_a_new_conversation_holds_root_system_question_and_answer(asking: AskService, db: Database) -> None:
    answer = asking.ask("", Question("Hi"))
    assert answer.text == "Hello there" and answer.finish_details == "stop" and answer.end_turn
    stored = {m.role: m for m in messages_of(db, answer.conversation_id)}
    assert set(stored) == {None, "system", "user", "assistant"}
    assert stored["system"].content == "Be brief." and stored["system"].parent_id == stored[None].id
    assert stored["user"].parent_id == stored["system"].id
    assert stored["assistant"].parent_id == stored["user"].id and stored["assistant"].id == answer.message_id
    assert (stored["assistant"].prompt_tokens, stored["assistant"].completion_tokens) == (7, 2)


def test_continuing_sends_the_whole_path_as_context(asking: AskService, provider: ScriptedProvider) -> None:
    first = asking.ask("", Question("One"))
    asking.ask("", Question("Two", conversation_id=first.conversation_id))
    sent = provider.requests[-1].messages
    assert [(m.role, m.content) for m in sent] == [
        ("system", "Be brief."), ("user", "One"), ("assistant", "Hello there"), ("user", "Two")
    ]


def test_a_branch_is_a_sibling_and_becomes_the_current_node(
    asking: AskService, conversations: ConversationService, provider: ScriptedProvider
) -> None:
    first = asking.ask("", Question("One"))
    second = asking.ask("", Question("Two", conversation_id=first.conversation_id))
    branch = asking.ask("", Question("Two again", conversation_id=first.conversation_id, parent_id=first.message_id))
    tree = conversations.history("", first.conversation_id).document
    siblings = tree["mapping"][str(first.message_id)]["children"]
    assert len(siblings) == 2 and tree["current_node"] == str(branch.message_id)
    assert str(second.message_id) in tree["mapping"]
    assert [m.content for m in provider.requests[-1].messages][-1] == "Two again"


def test_a_parent_of_another_conversation_is_parent_not_found(asking: AskService) -> None:
    one, other = asking.ask("", Question("One")), asking.ask("", Question("Other"))
    with pytest.raises(ParentNotFound):
        asking.ask("", Question("x", conversation_id=one.conversation_id, parent_id=other.message_id))


def test_another_owners_conversation_is_not_found(asking: AskService, conversations: ConversationService) -> None:
    mine = asking.ask("alice", Question("Secret"))
    with pytest.raises(ConversationNotFound):
        asking.ask("bob", Question("Let me in", conversation_id=mine.conversation_id))
    for action in (
        lambda: conversations.history("bob", mine.conversation_id),
        lambda: conversations.list_conversations("bob", after=mine.conversation_id),  # as a cursor
        lambda: conversations.rename("bob", mine.conversation_id, "Mine now"),
        lambda: conversations.delete("bob", mine.conversation_id),
    ):
        with pytest.raises(ConversationNotFound):
            action()
    conversations.clear("bob")
    assert conversations.history("alice", mine.conversation_id).document["title"] == "New chat"


def test_closing_a_stream_early_keeps_the_text_so_far_marked_interrupted(
    asking: AskService, provider: ScriptedProvider, db: Database
) -> None:
    provider.answer_with(Scripted(pieces=("Once", " upon", " a time")))
    events = asking.ask_stream("", Question("A story"))
    first = next(events)
    events.close()  # the client left
    stored = next(m for m in messages_of(db, first.answer.conversation_id) if m.role == "assistant")
    assert stored.content == "Once" and stored.status == INTERRUPTED and stored.finish_details == "interrupted"


def test_an_upstream_failure_mid_answer_keeps_the_text_and_names_the_conversation(
    asking: AskService, provider: ScriptedProvider, db: Database
) -> None:
    provider.answer_with(Scripted(pieces=("Half",), error=UpstreamError("The upstream broke off.")))
    with pytest.raises(UpstreamError) as raised:
        asking.ask("", Question("Tell me"))
    conversation_id = uuid.UUID(raised.value.details["conversation_id"])
    stored = next(m for m in messages_of(db, conversation_id) if m.role == "assistant")
    assert stored.content == "Half" and stored.status == INTERRUPTED


def test_an_answer_ending_without_a_finish_is_an_error_and_is_kept(
    asking: AskService, provider: ScriptedProvider, db: Database
) -> None:
    provider.answer_with(Scripted(pieces=("Cut",), finish=None))
    with pytest.raises(UpstreamError) as raised:
        asking.ask("", Question("Tell me"))
    conversation_id = uuid.UUID(raised.value.details["conversation_id"])
    assert [m.content for m in messages_of(db, conversation_id) if m.role == "assistant"] == ["Cut"]


def test_asking_into_a_deleted_conversation_is_conversation_not_found(
    asking: AskService, conversations: ConversationService
) -> None:
    first = asking.ask("", Question("One"))
    conversations.delete("", first.conversation_id)
    with pytest.raises(ConversationNotFound):
        asking.ask("", Question("Two", conversation_id=first.conversation_id, parent_id=first.message_id))
    with pytest.raises(ConversationNotFound):
        conversations.rename("", first.conversation_id, "Gone")


def test_an_answer_to_a_conversation_deleted_meanwhile_is_dropped(
    asking: AskService, conversations: ConversationService, db: Database
) -> None:
    events = asking.ask_stream("", Question("Long answer"))
    first = next(events)
    conversations.delete("", first.answer.conversation_id)
    list(events)  # the answer ends; there is nothing to keep it in
    assert messages_of(db, first.answer.conversation_id) == []


def test_asks_and_renames_racing_deletes_lose_with_a_404_and_leave_nothing_behind(
    asking: AskService, conversations: ConversationService, db: Database
) -> None:
    outcomes: list[str] = []
    for _ in range(12):
        start = asking.ask("", Question("Start"))
        target = start.conversation_id

        def ask() -> None:
            try:
                asking.ask("", Question("Again", conversation_id=target))
                outcomes.append("answered")
            except ConversationNotFound:
                outcomes.append("not found")

        def rename() -> None:
            try:
                conversations.rename("", target, "Renamed")
                outcomes.append("renamed")
            except ConversationNotFound:
                outcomes.append("not found")

        def delete() -> None:
            try:
                conversations.delete("", target)
            except ConversationNotFound:
                pass

        threads = [threading.Thread(target=work) for work in (ask, rename, delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert set(outcomes) <= {"answered", "renamed", "not found"} and len(outcomes) == 24
    with UnitOfWork(db) as uow:
        orphans = uow.session.scalar(
            select(func.count()).select_from(Message).where(
                ~Message.conversation_id.in_(select(Conversation.id))
            )
        )
    assert orphans == 0


def test_keyset_pages_neither_repeat_nor_skip(asking: AskService, conversations: ConversationService) -> None:
    made = [asking.ask("", Question(f"Q{i}")).conversation_id for i in range(7)]
    seen: list[uuid.UUID] = []
    after = None
    while True:
        page = conversations.list_conversations("", limit=3, after=after)
        if not page:
            break
        seen += [summary.id for summary in page]
        after = page[-1].id
    assert seen == list(reversed(made))


def test_titles_are_written_in_the_background_unless_renamed_first(
    db: Database, provider: ScriptedProvider, conversations: ConversationService
) -> None:
    titles = TitleWriter(db, provider, enabled=True)
    asking = AskService(db, provider, metrics=Metrics(), titles=titles)
    try:
        named = asking.ask("", Question("Penguins"))
        wait_until(lambda: conversations.history("", named.conversation_id).document["title"] == "About Penguins")
    finally:
        titles.close()


class SlowTitles(ScriptedProvider):
    """Titles that take a while, as from a busy upstream."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def generate_title(self, request: ReplyRequest, answer: str) -> str | None:
        time.sleep(self.seconds)
        return super().generate_title(request, answer)


def titled(conversations: ConversationService, answers: list[Answer]) -> list[str]:
    return [conversations.history("", a.conversation_id).document["title"] for a in answers]


def test_titles_that_cannot_keep_up_are_dropped_counted_and_never_late(
    db: Database, conversations: ConversationService
) -> None:
    provider, metrics = SlowTitles(0.3), Metrics()
    titles = TitleWriter(db, provider, enabled=True, metrics=metrics, concurrency=1, max_waiting=2, max_age=0.5)
    asking = AskService(db, provider, metrics=metrics, titles=titles)
    try:
        answers = [asking.ask("", Question(f"Topic {n}")) for n in range(6)]
        started = time.monotonic()
        titles.close()
        assert time.monotonic() - started < 2.0  # nothing piled up behind the load
    finally:
        titles.close()
    named = [title for title in titled(conversations, answers) if title != "New chat"]
    assert 1 <= len(named) <= 3  # the one in progress, and what waited briefly enough
    dropped = metrics.titles_dropped.labels("queue_full")._value.get() + metrics.titles_dropped.labels("too_late")._value.get()
    assert dropped == 6 - len(named)


def test_titles_all_come_when_the_service_keeps_up(db: Database, conversations: ConversationService) -> None:
    provider = SlowTitles(0.01)
    titles = TitleWriter(db, provider, enabled=True, concurrency=2, max_waiting=10, max_age=5.0)
    asking = AskService(db, provider, metrics=Metrics(), titles=titles)
    try:
        answers = [asking.ask("", Question(f"Topic {n}")) for n in range(8)]
    finally:
        titles.close()
    assert titled(conversations, answers) == [f"About Topic {n}" for n in range(8)]


def test_an_unreachable_database_is_database_unavailable(unused_port_url: str) -> None:
    database = Database(unused_port_url)
    try:
        with pytest.raises(DatabaseUnavailable):
            ConversationService(database, None).list_conversations("")
    finally:
        database.dispose()


@pytest.fixture
def unused_port_url() -> str:
    from fakes.net import free_port

    return f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing"

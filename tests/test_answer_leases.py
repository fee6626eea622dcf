"""Answers never stay stuck `in_progress`: their text is saved as it streams, in rounds,
and answers whose process is gone (its lease ran out) are marked interrupted by anyone, while
answers a live process is writing are left alone. Service tier, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from fakes.net import free_port
from models.db import Database
from models.entities import utcnow
from models.statuses import IN_PROGRESS, INTERRUPTED
from services.answer_leases import AnswerLeases
from services.asking import AnswerEvent, AskService, Question
from services.metrics import Metrics
from services.search_index import SearchIndexer
from services.titles import TitleWriter
from services.unit_of_work import UnitOfWork
from tests.scripted_provider import Scripted, ScriptedProvider

LEASE = 30.0


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
def asking_service(db: Database, provider: ScriptedProvider) -> Iterator[Callable[..., AskService]]:
    """One process's answering: its own leases, as each worker process has (stopped after the test)."""
    made: list[AskService] = []

    def make(save_every: float | None = None) -> AskService:
        """`save_every` None: the test runs the rounds itself."""
        titles = TitleWriter(db, provider, enabled=False)
        leases = AnswerLeases(db, LEASE, save_every=save_every or 0.5, background=save_every is not None)
        made.append(AskService(db, provider, metrics=Metrics(), titles=titles, leases=leases))
        return made[-1]

    yield make
    for asking in made:
        asking.leases.stop()


def answer_row(db: Database, events_seen: AnswerEvent) -> Any:
    with UnitOfWork(db) as uow:
        return next(m for m in uow.conversations.messages(events_seen.answer.conversation_id)
                    if m.id == events_seen.answer.message_id)


def test_the_text_is_saved_as_it_streams_in_rounds(db: Database, provider: ScriptedProvider, asking_service: Callable[..., AskService]
) -> None:
    asking = asking_service()
    provider.answer_with(Scripted(pieces=("First", " small", " more", " end")))
    events = asking.ask_stream("", Question("Go"))
    first = next(events)
    assert answer_row(db, first).content == "First"  # the first text makes the row
    next(events)
    grown = next(events)
    assert answer_row(db, grown).content == "First"  # later text waits for the next round...
    assert asking.leases.save_texts() == 1  # ...which saves every answer's latest text at once
    row = answer_row(db, grown)
    assert row.content == "First small more" and row.status == IN_PROGRESS
    assert row.lease_expires_at > utcnow() + timedelta(seconds=LEASE - 5)
    assert asking.leases.save_texts() == 0  # nothing new: nothing written
    events.close()


def test_the_rounds_run_on_their_own_every_few_hundred_milliseconds(
    db: Database, provider: ScriptedProvider, asking_service: Callable[..., AskService]
) -> None:
    asking = asking_service(save_every=0.1)
    provider.answer_with(Scripted(pieces=("One", " two")), Scripted(pieces=("Three", " four")))
    one, two = asking.ask_stream("", Question("A")), asking.ask_stream("", Question("B"))
    next(one), next(two)
    seen = [next(one), next(two)]
    deadline = time.monotonic() + 5
    while [answer_row(db, e).content for e in seen] != ["One two", "Three four"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [answer_row(db, e).content for e in seen] == ["One two", "Three four"]
    one.close()
    two.close()


def test_an_answer_not_streamed_is_written_in_progress_once_it_takes_a_while(
    db: Database, provider: ScriptedProvider, asking_service: Callable[..., AskService]
) -> None:
    """A quick answer costs one write, at its end; a slow one is kept as it comes, as a stream is."""
    asking = asking_service()
    provider.answer_with(Scripted(pieces=("Quick", " one")), Scripted(pieces=("Slow", " to", " come")))
    quick = asking.ask_stream("", Question("A"), write_early=False)
    first = next(quick)
    with UnitOfWork(db) as uow:
        assert first.answer.message_id not in {m.id for m in uow.conversations.messages(first.answer.conversation_id)}
    assert answer_row(db, list(quick)[-1]).status == "finished_successfully"
    slow = asking.ask_stream("", Question("B"), write_early=False)
    next(slow)
    time.sleep(asking.leases.save_every + 0.1)  # the upstream is slow to send the rest
    later = next(slow)
    row = answer_row(db, later)
    assert (row.status, row.content) == (IN_PROGRESS, "Slow to")
    slow.close()
    assert answer_row(db, later).status == INTERRUPTED


def test_a_live_answer_is_left_alone_and_a_dead_one_is_marked_interrupted_with_its_text(
    db: Database, provider: ScriptedProvider, asking_service: Callable[..., AskService]
) -> None:
    """Three processes on one database: one lives, one dies mid-answer (its iterator is never
    closed and its leases never renewed, as after a kill -9), one sweeps."""
    alive = asking_service()
    dying = asking_service()
    sweeper = AnswerLeases(db, LEASE, background=False)
    provider.answer_with(Scripted(pieces=("Alive", " and well")), Scripted(pieces=("Doomed", " answer", " cut")))
    live = alive.ask_stream("", Question("One"))
    live_first = next(live)
    dead = dying.ask_stream("", Question("Two"))
    next(dead)
    dead_second = next(dead)
    dying.leases.save_texts()  # its last round before it died

    assert sweeper.sweep(now=utcnow() + timedelta(seconds=LEASE / 2)) == 0
    later = utcnow() + timedelta(seconds=LEASE * 2)
    alive.leases.renew(now=later - timedelta(seconds=LEASE / 2))
    assert sweeper.sweep(now=later) == 1

    swept = answer_row(db, dead_second)
    assert (swept.status, swept.finish_details, swept.end_turn) == (INTERRUPTED, "interrupted", False)
    assert swept.content == "Doomed answer" and swept.lease_expires_at is None
    assert answer_row(db, live_first).status == IN_PROGRESS
    assert [e.answer.text for e in live][-1] == "Alive and well"
    assert answer_row(db, live_first).status == "finished_successfully"
    dead.close()


def test_a_late_save_of_a_swept_answer_has_the_last_word(
    db: Database, provider: ScriptedProvider, asking_service: Callable[..., AskService]
) -> None:
    """A writer that was only slow (its lease ran out while it lived) still stores its final text."""
    writer = asking_service()
    provider.answer_with(Scripted(pieces=("Slow", " but", " alive")))
    events = writer.ask_stream("", Question("Go"))
    first = next(events)
    AnswerLeases(db, LEASE, background=False).sweep(now=utcnow() + timedelta(seconds=LEASE * 2))
    assert answer_row(db, first).status == INTERRUPTED
    second = next(events)
    assert answer_row(db, second).content == "Slow"  # progress saves leave a swept answer alone
    final = list(events)[-1]
    row = answer_row(db, final)
    assert (row.status, row.content) == ("finished_successfully", "Slow but alive")


def test_shutting_down_marks_this_processs_answers_interrupted(
    db: Database, provider: ScriptedProvider, asking_service: Callable[..., AskService]
) -> None:
    writer = asking_service()
    other = asking_service()
    provider.answer_with(Scripted(pieces=("Mine", " too")), Scripted(pieces=("Theirs", " too")))
    mine, theirs = writer.ask_stream("", Question("A")), other.ask_stream("", Question("B"))
    my_first, their_first = next(mine), next(theirs)
    assert writer.leases.interrupt_own() == 1
    assert answer_row(db, my_first).status == INTERRUPTED
    assert answer_row(db, their_first).status == IN_PROGRESS
    mine.close()
    theirs.close()


def test_renewing_and_sweeping_runs_on_its_own(
    db: Database, provider: ScriptedProvider, asking_service: Callable[..., AskService]
) -> None:
    leases = AnswerLeases(db, lease_seconds=0.3)
    writer = asking_service()
    provider.answer_with(Scripted(pieces=("Left", " behind")))
    events = writer.ask_stream("", Question("Go"))
    first = next(events)
    writer.leases.let_go(first.answer.message_id)
    with UnitOfWork(db) as uow:  # its lease ends now
        uow.conversations.renew_leases([first.answer.message_id], utcnow())
        uow.commit()
    leases.start()
    try:
        deadline = time.monotonic() + 5
        while answer_row(db, first).status == IN_PROGRESS and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        leases.stop()
    assert answer_row(db, first).status == INTERRUPTED
    events.close()


def test_the_next_ask_continues_after_an_interrupted_answer_with_its_text(
    db: Database, provider: ScriptedProvider, asking_service: Callable[..., AskService]
) -> None:
    writer = asking_service()
    provider.answer_with(Scripted(pieces=("Half", " an answer", " lost")))
    events = writer.ask_stream("", Question("Start"))
    next(events)
    cut = next(events)
    writer.leases.save_texts()
    writer.leases.let_go(cut.answer.message_id)
    AnswerLeases(db, LEASE, background=False).sweep(now=utcnow() + timedelta(seconds=LEASE * 2))
    writer.ask("", Question("Go on", conversation_id=cut.answer.conversation_id))
    sent = [(m.role, m.content) for m in provider.requests[-1].messages]
    assert sent[-2:] == [("assistant", "Half an answer"), ("user", "Go on")]
    events.close()


def test_a_database_that_is_down_is_retried_every_second_not_in_a_spin(caplog: pytest.LogCaptureFixture) -> None:
    """A failed round made the next one due at once: the loop spun, a log line per turn."""
    down = Database(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing", timeout=1.0)
    leases = AnswerLeases(down, lease_seconds=3.0)
    indexer = SearchIndexer(down, every=0.2)
    try:
        with caplog.at_level(logging.WARNING):
            leases.start()
            indexer.start()
            time.sleep(1.5)
    finally:
        leases.stop()
        indexer.stop()
        down.dispose()
    failures = [record for record in caplog.records if "database unavailable" in record.getMessage()]
    assert 2 <= len(failures) <= 2 + 1.5 / 0.2 + 1, len(failures)

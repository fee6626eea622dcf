"""The context budget: windows per model, counts cached per message, truncation at the edges,
summaries stored and reused per branch; through the services (both databases) and a route."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fakes.openai_upstream import FakeOpenAI
from models.db import Database
from models.entities import Message
from models.statuses import FINISHED
from services import tokens
from services.asking import AskService, Question
from services.context_budget import ContextBudget
from services.context_window import SUMMARY_INSTRUCTION, SUMMARY_PREFIX, ContextFitter
from services.conversations import ConversationService
from services.errors import UpstreamError
from services.metrics import Metrics
from services.providers.base import ChatMessage, ReplyChunk, ReplyRequest
from services.titles import TitleWriter
from services.unit_of_work import UnitOfWork
from tests.helpers import ask, history
from tests.scripted_provider import Scripted, ScriptedProvider

MODEL = "scripted-model"


def dialogue(turns: int, *, system: str = "Be brief.") -> list[ChatMessage]:
    """A system prompt, `turns` exchanges, and a final question; each a stored node."""
    messages = [ChatMessage("system", system, node_id=uuid.uuid4())]
    for n in range(turns):
        messages.append(ChatMessage("user", f"Question {n} about the weather", node_id=uuid.uuid4()))
        messages.append(ChatMessage("assistant", f"Answer {n}: sunny and warm", node_id=uuid.uuid4()))
    messages.append(ChatMessage("user", "And tomorrow?", node_id=uuid.uuid4()))
    return messages


# -- windows and limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-mini", 128_000),
        ("gpt-4o-2024-08-06", 128_000),
        ("gpt-4.1-nano", 1_047_576),
        ("gpt-4", 8_192),
        ("gpt-3.5-turbo-0125", 16_385),
        ("o3-mini", 200_000),
        ("llama3.1:8b", 131_072),
        ("meta-llama/Llama-3.1-8B-Instruct", 131_072),
        ("Qwen2.5-7B-Instruct", 32_768),
        ("something-unknown", 8_192),
    ],
)
def test_windows_by_name_or_longest_prefix_and_a_default(model: str, window: int) -> None:
    assert ContextBudget().window(model) == window


def test_the_configuration_overrides_the_table_and_the_default() -> None:
    budget = ContextBudget(windows={"gpt-4o": 64_000, "My-Model": 4_000}, default_window=2_000)
    assert budget.window("gpt-4o-mini") == 64_000
    assert budget.window("my-model:q4") == 4_000
    assert budget.window("gpt-4.1") == 1_047_576
    assert budget.window("unknown") == 2_000


def test_the_answer_s_room_is_the_request_s_max_tokens_or_the_reserve_at_most_half() -> None:
    budget = ContextBudget(windows={"m": 10_000}, reserve=2_000)
    assert budget.limit("m") == 8_000
    assert budget.limit("m", max_tokens=500) == 9_500
    assert budget.limit("m", max_tokens=50_000) == 5_000


def test_counts_are_cached_per_node_and_text_length() -> None:
    budget = ContextBudget()
    node = uuid.uuid4()
    first = budget.counts([ChatMessage("user", "one two three four", node_id=node)])
    # the same node with a text of the same length answers from the cache, not the tokenizer
    again = budget.counts([ChatMessage("user", "x" * len("one two three four"), node_id=node)])
    assert again == first
    grown = budget.counts([ChatMessage("user", "one two three four five", node_id=node)])
    assert grown[0] == first[0] + 1
    unstored = budget.counts([ChatMessage("user", "x" * len("one two three four"))])
    assert unstored != first
    assert budget.counts([ChatMessage("user", "Hi")]) == [tokens.count_prompt([ChatMessage("user", "Hi")]) - tokens.REPLY_PRIMING]


# -- truncation at the edges -------------------------------------------------------------


def test_a_path_exactly_at_the_limit_is_sent_whole_one_token_over_loses_the_oldest_turn() -> None:
    budget = ContextBudget()
    messages = dialogue(3)
    total = budget.total(budget.counts(messages))
    assert total == tokens.count_prompt(messages)

    fits = budget.truncate(messages, total)
    assert fits.messages == messages and not fits.changed and fits.details() is None

    over = budget.truncate(messages, total - 1)
    assert over.left_out == 2 and not over.cut
    assert over.messages == [messages[0], *messages[3:]]  # the system prompt, then whole turns
    assert over.tokens == tokens.count_prompt(over.messages) <= total - 1
    assert over.details() == {"messages_left_out": 2, "summarized": False, "cut": False, "budget_tokens": total - 1}


def test_the_newest_turns_that_fit_are_kept_each_whole() -> None:
    budget = ContextBudget()
    messages = dialogue(20)
    limit = tokens.count_prompt([messages[0], *messages[-5:]])
    fitted = budget.truncate(messages, limit)
    assert fitted.messages == [messages[0], *messages[-5:]] and fitted.left_out == 36
    assert fitted.messages[1].role == "user"


def test_a_single_message_over_the_budget_is_cut_in_its_middle_and_says_so() -> None:
    budget = ContextBudget()
    words = " ".join(f"w{n}" for n in range(3000))
    messages = [*dialogue(2)[:-1], ChatMessage("user", f"BEGIN {words} END", node_id=uuid.uuid4())]
    fitted = budget.truncate(messages, 300)
    assert fitted.cut and fitted.left_out == 4
    system, question = fitted.messages
    assert system == messages[0]
    assert question.content.startswith("BEGIN w0 w1") and question.content.endswith("w2999 END")
    assert "tokens of this message were cut here to fit the model's context window" in question.content
    assert question.node_id is None  # cut text is no stored node's: never cached under one
    assert tokens.count_prompt(fitted.messages) <= 300
    assert fitted.details() == {"messages_left_out": 4, "summarized": False, "cut": True, "budget_tokens": 300}


def test_a_huge_system_prompt_is_cut_too_and_the_question_keeps_at_least_half() -> None:
    budget = ContextBudget()
    essay = " ".join(f"s{n}" for n in range(2000))
    question = " ".join(f"q{n}" for n in range(2000))
    messages = [ChatMessage("system", essay), ChatMessage("user", question)]
    fitted = budget.truncate(messages, 400)
    assert fitted.cut and tokens.count_prompt(fitted.messages) <= 400
    system, asked = (tokens.count_prompt([m]) for m in fitted.messages)
    assert 150 <= asked and 150 <= system


def test_a_long_last_turn_loses_its_older_messages_before_anything_is_cut() -> None:
    budget = ContextBudget()
    inputs = [ChatMessage("user", f"input {n} " * 20, node_id=uuid.uuid4()) for n in range(3)]
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "a"), ChatMessage("assistant", "b"), *inputs]
    limit = tokens.count_prompt([messages[0], *inputs[1:]])
    fitted = budget.truncate(messages, limit)
    assert fitted.messages == [messages[0], *inputs[1:]] and fitted.left_out == 3 and not fitted.cut


# -- through the services ------------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def is_summary_request(request: ReplyRequest) -> bool:
    return request.messages[0].content.startswith(SUMMARY_INSTRUCTION)


@dataclass
class SummarizingProvider(ScriptedProvider):
    """Answers summary requests with `summary` (or fails them), the others as scripted."""

    summary: str = "It was sunny all week."
    summaries_fail: bool = False

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        if not is_summary_request(request):
            return super().stream_reply(request)
        self.requests.append(request)
        if self.summaries_fail:
            return self._chunks(Scripted(pieces=(), error=UpstreamError("The upstream answered 503")))
        return self._chunks(Scripted(pieces=(self.summary,)))


@pytest.fixture
def provider() -> SummarizingProvider:
    return SummarizingProvider()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def service(db: Database, provider: ScriptedProvider, metrics: Metrics, fitter: ContextFitter) -> Iterator[AskService]:
    titles = TitleWriter(db, provider, enabled=False)
    yield AskService(db, provider, metrics=metrics, titles=titles, system_prompt="Be brief.", context=fitter)
    titles.close()


WINDOW = 120
"""Tokens: the system prompt and about six short exchanges."""


@pytest.fixture
def truncating(db: Database, provider: ScriptedProvider, metrics: Metrics) -> Iterator[AskService]:
    fitter = ContextFitter(ContextBudget(windows={MODEL: WINDOW}, reserve=0), db=db, metrics=metrics)
    yield from service(db, provider, metrics, fitter)


@pytest.fixture
def summarizing(db: Database, provider: ScriptedProvider, metrics: Metrics) -> Iterator[AskService]:
    fitter = ContextFitter(
        ContextBudget(windows={MODEL: WINDOW}, reserve=0), db=db, metrics=metrics, strategy="summarize", summarizer=provider
    )
    yield from service(db, provider, metrics, fitter)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics._registry.get_sample_value(name, labels) or 0.0  # type: ignore[union-attr]


def answer_metadata(db: Database, conversation_id: uuid.UUID, message_id: uuid.UUID) -> dict[str, Any]:
    mapping = ConversationService(db, None).history("", conversation_id).document["mapping"]
    return dict(mapping[str(message_id)]["message"]["metadata"])


def test_a_long_main_line_is_truncated_but_a_short_branch_goes_whole(
    truncating: AskService, provider: ScriptedProvider, db: Database, metrics: Metrics
) -> None:
    first = truncating.ask("", Question("Question 0 about the weather"))
    answers = [first]
    for n in range(1, 12):
        answers.append(truncating.ask("", Question(f"Question {n} about the weather", conversation_id=first.conversation_id)))
    sent = provider.requests[-1].messages
    assert tokens.count_prompt(sent) <= WINDOW
    assert sent[0].content == "Be brief." and sent[-1].content == "Question 11 about the weather"
    assert [m.role for m in sent[1:]] == ["user", "assistant"] * ((len(sent) - 2) // 2) + ["user"]
    metadata = answer_metadata(db, first.conversation_id, answers[-1].message_id)
    left_out = 23 - (len(sent) - 1)  # 12 questions and 11 answers above the last answer
    assert metadata["context"] == {"messages_left_out": left_out, "summarized": False, "cut": False, "budget_tokens": WINDOW}
    assert "context" not in answer_metadata(db, first.conversation_id, first.message_id)
    assert sample(metrics, "gpt_api_context_truncations_total", strategy="truncate") >= 1
    assert sample(metrics, "gpt_api_context_messages_left_out_total", strategy="truncate") >= left_out

    branch = truncating.ask(
        "", Question("A branch", conversation_id=first.conversation_id, parent_id=answers[1].message_id)
    )
    assert [m.content for m in provider.requests[-1].messages] == [
        "Be brief.", "Question 0 about the weather", "Hello there", "Question 1 about the weather", "Hello there", "A branch"
    ]
    assert "context" not in answer_metadata(db, first.conversation_id, branch.message_id)


def test_a_2000_turn_conversation_is_answered_within_the_window(
    truncating: AskService, provider: ScriptedProvider, db: Database
) -> None:
    first = truncating.ask("", Question("Start"))
    with UnitOfWork(db) as uow:
        chain = [
            (uuid.uuid4(), role, f"{role} message {n}")
            for n in range(2000) for role in ("user", "assistant")
        ]
        uow.conversations.add_chain(first.conversation_id, first.message_id, chain, status=FINISHED)
        uow.conversations.touch(first.conversation_id, current_node_id=chain[-1][0])
        uow.commit()
    answer = truncating.ask("", Question("Still there?", conversation_id=first.conversation_id))
    sent = provider.requests[-1].messages
    assert tokens.count_prompt(sent) <= WINDOW and sent[-1].content == "Still there?"
    assert sent[-2].content == "assistant message 1999"
    assert answer_metadata(db, first.conversation_id, answer.message_id)["context"]["messages_left_out"] > 3990


def test_a_summary_is_made_once_stored_on_its_node_and_reused_by_the_branch(
    summarizing: AskService, provider: ScriptedProvider, db: Database, metrics: Metrics
) -> None:
    first = summarizing.ask("", Question("Question 0 about the weather"))
    answers = [first]
    n = 1
    while not any(is_summary_request(r) for r in provider.requests):
        answers.append(summarizing.ask("", Question(f"Question {n} about the weather", conversation_id=first.conversation_id)))
        n += 1
        assert n < 20, "no summary was ever asked for"
    summary_request, answered = provider.requests[-2:]
    assert is_summary_request(summary_request) and summary_request.sampling.max_tokens == WINDOW // 8
    assert summary_request.messages[-1].content == "Write the summary now."
    assert answered.messages[1].content == SUMMARY_PREFIX + "It was sunny all week."
    assert tokens.count_prompt(answered.messages) <= WINDOW
    with UnitOfWork(db) as uow:
        summarized = [(m.role, m.summary) for m in uow.session.query(Message).filter(Message.summary.is_not(None))]
    assert summarized == [("assistant", "It was sunny all week.")]
    metadata = answer_metadata(db, first.conversation_id, answers[-1].message_id)
    assert metadata["context"]["summarized"] is True and metadata["context"]["messages_left_out"] >= 2
    assert sample(metrics, "gpt_api_context_summaries_total", outcome="made") == 1

    calls = len(provider.requests)
    summarizing.ask("", Question("One more", conversation_id=first.conversation_id))
    assert len(provider.requests) == calls + 1  # no new summary: the stored one is sent
    assert provider.requests[-1].messages[1].content == SUMMARY_PREFIX + "It was sunny all week."
    assert sample(metrics, "gpt_api_context_summaries_total", outcome="reused") == 1

    # a branch above the summarised node does not see it
    summarizing.ask("", Question("Early branch", conversation_id=first.conversation_id, parent_id=answers[0].message_id))
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in provider.requests[-1].messages)


def test_a_summary_that_fails_leaves_the_request_truncated(
    summarizing: AskService, provider: SummarizingProvider, db: Database, metrics: Metrics
) -> None:
    provider.summaries_fail = True
    first = summarizing.ask("", Question("Question 0 about the weather"))
    for n in range(1, 12):
        summarizing.ask("", Question(f"Question {n} about the weather", conversation_id=first.conversation_id))
    sent = provider.requests[-1].messages
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in sent) and tokens.count_prompt(sent) <= WINDOW
    assert sample(metrics, "gpt_api_context_summaries_total", outcome="failed") >= 1
    with UnitOfWork(db) as uow:
        assert uow.session.query(Message).filter(Message.summary.is_not(None)).count() == 0


# -- through the routes -------------------------------------------------------------------


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"model_context_windows": {"gpt-test": 60}, "context_reserve_tokens": 0}


def test_the_answer_s_history_and_metrics_say_what_was_left_out(
    client: FlaskClient, app: Flask, fake_upstream: FakeOpenAI
) -> None:
    first = ask(client, "Question 0 about the weather")
    last = first
    for n in range(1, 6):
        last = ask(client, f"Question {n} about the weather", conversation_id=first["conversation_id"])
    sent = fake_upstream.requests[-1].body["messages"]
    assert sent[-1]["content"] == "Question 5 about the weather"
    assert tokens.count_prompt([ChatMessage(m["role"], m["content"]) for m in sent]) <= 60
    metadata = history(client, first["conversation_id"])["mapping"][last["parent_id"]]["message"]["metadata"]
    assert metadata["context"]["messages_left_out"] == 11 - len(sent)
    exposition = client.get("/metrics").get_data(as_text=True)
    assert 'gpt_api_context_truncations_total{strategy="truncate"}' in exposition


def said(role: str, content: Any, **more: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **more}


def chat_turns(turns: int) -> list[dict[str, Any]]:
    """A Chat Completions dialogue: a system message, `turns` exchanges, a final question."""
    messages = [said("system", "Be brief.")]
    for n in range(turns):
        messages += [said("user", f"Question {n} about the weather"), said("assistant", f"Answer {n}: sunny and warm")]
    return [*messages, said("user", "And tomorrow?")]


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    roles = {"developer": "system", "tool": "assistant"}
    return tokens.count_prompt([ChatMessage(roles.get(m["role"], m["role"]), str(m["content"] or "")) for m in messages])


def completion_node(client: FlaskClient, completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's stored answer, from `msg/history` of whichever conversation holds it."""
    node_id = str(uuid.UUID(hex=completion["id"].removeprefix("chatcmpl-")))
    for summary in client.post("/api/chat/conversation", json={}).get_json()["response"]:
        mapping = history(client, summary["id"])["mapping"]
        if node_id in mapping:
            return dict(mapping[node_id]["message"])
    raise AssertionError(f"no stored answer {completion['id']}")


def test_a_chat_completion_sends_the_newest_whole_turns_that_fit_and_stores_them_all(
    client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    messages = chat_turns(8)
    response = client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": messages})
    assert response.status_code == 200, response.get_data(as_text=True)
    completion = response.get_json()
    sent = fake_upstream.requests[-1].body["messages"]
    assert prompt_tokens(sent) <= 60 and len(sent) < len(messages)
    assert sent == [messages[0], *messages[len(messages) - len(sent) + 1 :]] and sent[1]["role"] == "user"
    stored = client.get(f"/v1/chat/completions/{completion['id']}/messages?limit=100").get_json()["data"]
    assert [m["content"] for m in stored] == [m["content"] for m in messages]  # the client's dialogue, whole
    context = completion_node(client, completion)["metadata"]["context"]
    assert context == {"messages_left_out": len(messages) - len(sent), "summarized": False, "cut": False, "budget_tokens": 60}
    streamed = client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": messages, "stream": True})
    assert streamed.status_code == 200 and fake_upstream.requests[-1].body["messages"] == sent


def test_a_chat_completion_keeps_a_tool_result_with_its_call_and_cuts_only_plain_text(
    client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    def tool_loop(arguments: str) -> list[dict[str, Any]]:
        call = {"id": "call_1", "type": "function", "function": {"name": "forecast", "arguments": arguments}}
        return [
            said("user", "What will the weather be tomorrow, and the day after, and the day after that, where I live?"),
            said("assistant", None, tool_calls=[call]),
            said("tool", "Tomorrow: rain all day long with strong winds from the west", tool_call_id="call_1"),
        ]

    fits = tool_loop('{"day": "tomorrow"}')
    response = client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": [*chat_turns(3)[:-1], *fits]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert fake_upstream.requests[-1].body["messages"] == [said("system", "Be brief."), *fits[1:]]  # the question left out
    over = tool_loop(json.dumps({"days": ["tomorrow", "the day after", "the day after that"], "where": "home " * 20}))
    response = client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": [*chat_turns(3)[:-1], *over]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert fake_upstream.requests[-1].body["messages"] == [said("system", "Be brief."), *over[1:]]  # never the result alone
    assert completion_node(client, response.get_json())["metadata"]["context"]["cut"] is False

    huge = " ".join(f"word{n}" for n in range(400))
    response = client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": [said("user", huge)]})
    assert response.status_code == 200
    (sent_message,) = fake_upstream.requests[-1].body["messages"]
    assert sent_message["content"].startswith("word0 ") and sent_message["content"].endswith(" word399")
    assert "tokens of this message were cut here" in sent_message["content"] and prompt_tokens([sent_message]) <= 60
    assert completion_node(client, response.get_json())["metadata"]["context"]["cut"] is True


def test_no_budget_for_a_chatgpt_account_alone_which_keeps_its_own_context(db: Database, metrics: Metrics) -> None:
    from services.context_window import build_context_fitter
    from tests.conftest import make_settings

    provider = ScriptedProvider()
    chatgpt = make_settings("sqlite://", None, llm_provider="chatgpt")
    assert build_context_fitter(chatgpt, db, provider, metrics) is None
    openai = make_settings("sqlite://", "http://127.0.0.1:9/v1", context_strategy="summarize")
    fitter = build_context_fitter(openai, db, provider, metrics)
    assert fitter is not None and fitter.strategy == "summarize"

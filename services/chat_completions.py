"""`/v1/chat/completions`: a faithful proxy whose exchanges become branching conversations.

The client's body goes upstream as it is (only `store` and `metadata`, which are about
keeping it here, stay here) and the upstream's answer comes back as it is, under the id
the stored completion gets. Every message of a stored exchange is a node of the one tree:
a request whose messages repeat a stored exchange (its messages and its answer, then more)
is stored in that exchange's conversation below the deepest node they share, found by
the path hashes of `services/message_paths.py`; anything else starts a conversation. So a
continued chat is one conversation, and an edit or a regenerate is a branch in it.

Nothing is written before the upstream answers: the request's new messages, the answer
and the stored completion are written together in one unit of work, once the answer is
whole, or broken off (then as far as it got, marked unfinished); a refused request
leaves nothing behind. What goes upstream is fitted into the model's context window
(`services/completion_context.py`); what is stored is the client's dialogue, whole.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from models.db import Database
from models.entities import Message, utcnow
from services import ids, tokens
from services.asking import FINISHED, INTERRUPTED, AskService
from services.chatgpt_format import message_document
from services.completion_chunks import CompletionBuilder
from services.completion_context import fit_messages
from services.context_window import ContextFitter
from services.conversations import ConversationService
from services.errors import (
    ChatCompletionNotFound,
    InvalidRequest,
    NotFound,
    ServiceError,
    UpstreamError,
    UpstreamNotConfigured,
)
from services.items import Page, page_of
from services.message_paths import first_hash, is_plain, message_text, next_hash, path_hashes
from services.metrics import Metrics
from services.providers.base import (
    ChatMessage,
    CompletionEvent,
    CompletionRequest,
    Provider,
    ReplyRequest,
    Role,
)
from services.providers.fallback import check_served
from services.titles import TitleWriter
from services.unit_of_work import UnitOfWork

KEPT_HERE = ("store", "metadata")
"""Request fields about storing the exchange here: not sent upstream."""
ORIGINAL_KEY = "chat_completion_message"
"""Where a stored node's `original` keeps the message as the client or upstream sent it."""
STEP = timedelta(microseconds=1)
"""Between the creation times of nodes written together, so they sort parent first."""
REQUEST_FIELDS = {
    "tools": "tools",
    "tool_choice": "tool_choice",
    "response_format": "response_format",
    "seed": "seed",
    "temperature": "temperature",
    "top_p": "top_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "user": "input_user",
}
"""What a stored completion says of its request beside the messages, as OpenAI's does (each
null when the request had none): the request's field, and its name in the stored object."""
REQUEST_KEY = "request"
"""Where the stored response keeps those fields."""


@dataclass(frozen=True)
class Placement:
    """Where a request's messages join a stored conversation: below `parent_id`, the node of
    its first `seen` messages."""

    conversation_id: uuid.UUID
    parent_id: uuid.UUID
    seen: int
    upstream_conversation_id: str | None
    upstream_parent_id: str | None


@dataclass
class Exchange:
    """One request on its way."""

    owner: str
    body: dict[str, Any]
    """What goes upstream: the client's body with `model` filled in, without `KEPT_HERE`."""
    store: bool
    metadata: dict[str, str]
    hashes: list[str]
    placement: Placement | None
    requested_at: datetime
    answer_id: uuid.UUID = field(default_factory=uuid.uuid4)
    message_ids: list[uuid.UUID] = field(default_factory=list)
    """Ids of the request's messages that are new here (those past `placement.seen`)."""
    sent: list[dict[str, Any]] | None = None
    """The messages as they go upstream, when fitting the context left some out or cut one."""
    sent_seen: int = 0
    """How many of `sent` come from the first `seen` messages."""
    context: dict[str, Any] | None = None
    """How the context was fitted (the answer's metadata), when it did not go whole."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's messages, whole: what is stored."""
        return cast(list[dict[str, Any]], self.body["messages"])

    @property
    def upstream_messages(self) -> list[dict[str, Any]]:
        return self.messages if self.sent is None else self.sent

    @property
    def seen(self) -> int:
        return self.placement.seen if self.placement is not None else 0

    def upstream_request(self) -> CompletionRequest:
        """What the provider is sent. An upstream that keeps conversations continues its own
        where the stored path carries its ids; elsewhere it is sent every message (fitted)."""
        body = self.body if self.sent is None else {**self.body, "messages": self.sent}
        placement = self.placement
        if placement is None or placement.upstream_parent_id is None:
            return CompletionRequest(body=body, user_message_id=str(self.message_ids[-1]))
        return CompletionRequest(
            body=body,
            user_message_id=str(self.message_ids[-1]),
            seen=placement.seen if self.sent is None else self.sent_seen,
            upstream_conversation_id=placement.upstream_conversation_id,
            upstream_parent_id=placement.upstream_parent_id,
        )

    @property
    def client_id(self) -> str:
        """The id the client is given: the stored completion's (with `store: false`, one that
        names nothing stored, so every id this route gives has the same form)."""
        return ids.encode(ids.CHAT_COMPLETION, self.answer_id)


@dataclass(frozen=True)
class StoredCompletion:
    """A stored completion in OpenAI's shape, and the node it hangs from."""

    completion: dict[str, Any]
    conversation_id: uuid.UUID
    parent_id: uuid.UUID


def chat_message(node: Any) -> dict[str, Any]:
    """A node as the Chat Completions message it was stored from."""
    original = node.original if isinstance(node.original, dict) else {}
    kept = (original.get("metadata") or {}).get(ORIGINAL_KEY)
    return dict(kept) if isinstance(kept, dict) else {"role": node.role, "content": node.content}


def _chat_messages(messages: Sequence[dict[str, Any]]) -> list[ChatMessage]:
    """The dialogue's text, for token estimates and titles (developer as system, as upstream)."""
    spoken = {"developer": "system", "system": "system", "user": "user", "assistant": "assistant"}
    return [
        ChatMessage(role=cast(Role, spoken[m.get("role", "")]), content=message_text(m.get("content")))
        for m in messages
        if m.get("role") in spoken
    ]


class ChatCompletionService:
    """Proxies Chat Completions and keeps them, threaded into conversations."""

    def __init__(
        self,
        db: Database,
        provider: Provider | None,
        *,
        asking: AskService,
        conversations: ConversationService,
        metrics: Metrics,
        titles: TitleWriter,
        store: bool = True,
        unconfigured_reason: str = "",
        max_prompt_chars: int | None = None,
        context: ContextFitter | None = None,
    ) -> None:
        self._db = db
        self._provider = provider
        self._asking = asking
        self._conversations = conversations
        self._metrics = metrics
        self._titles = titles
        self._store = store
        self._unconfigured_reason = unconfigured_reason
        self._max_prompt_chars = max_prompt_chars
        self._context = context
        """Fits each request into its model's window (None: the messages go as sent)."""

    # -- answering -----------------------------------------------------------

    def create(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        """The upstream's `chat.completion`, stored unless `store: false`."""
        provider = self._require_provider()
        exchange = self._prepare(owner, body, provider)
        started = time.perf_counter()
        try:
            event = provider.complete(exchange.upstream_request())
        except ServiceError as error:
            self._count_failure(provider, error)
            raise
        finally:
            self._metrics.upstream_seconds.labels(provider.name).observe(time.perf_counter() - started)
        completion = dict(event.data)
        if not isinstance(completion.get("usage"), dict):
            completion["usage"] = self._estimate(exchange, completion)
        self._observe_tokens(provider, completion["usage"])
        if exchange.store:
            self._save(exchange, completion, event, finished=True)
        completion["id"] = exchange.client_id
        return completion

    def stream(self, owner: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The upstream's chunks as they come; the exchange is stored when the stream ends,
        also when either side breaks it off (then the answer so far, marked unfinished)."""
        provider = self._require_provider()
        exchange = self._prepare(owner, body, provider)
        return self._relay(exchange, provider, provider.stream_completion(exchange.upstream_request()))

    def _relay(
        self, exchange: Exchange, provider: Provider, events: Iterator[CompletionEvent]
    ) -> Iterator[dict[str, Any]]:
        builder, last = CompletionBuilder(), CompletionEvent({})
        upstream = None
        started = time.perf_counter()
        try:
            for last in events:
                if not builder.envelope:
                    first_token = self._metrics.upstream_first_token_seconds.labels(provider.name)
                    first_token.observe(time.perf_counter() - started)
                upstream = upstream or last.upstream
                builder.add(last.data)
                yield {**last.data, "id": exchange.client_id}
            wants_usage = (exchange.body.get("stream_options") or {}).get("include_usage") is True
            if builder.usage is None and builder.finished:
                builder.usage = self._estimate(exchange, builder.completion())
                if wants_usage:
                    yield self._usage_chunk(exchange, builder)
        except ServiceError as error:
            self._count_failure(provider, error)
            raise
        finally:
            events.close()  # type: ignore[attr-defined]
            self._metrics.upstream_seconds.labels(provider.name).observe(time.perf_counter() - started)
            completion = builder.completion()
            if completion["choices"]:
                if builder.usage is None:
                    completion["usage"] = self._estimate(exchange, completion)
                self._observe_tokens(provider, completion["usage"])
                if exchange.store:
                    self._save(exchange, completion, replace(last, upstream=upstream), finished=builder.finished)
        if not builder.finished:
            unfinished = UpstreamError("The upstream ended the answer without finishing it.")
            self._metrics.upstream_errors.labels(provider.name, unfinished.code).inc()
            raise unfinished

    @staticmethod
    def _usage_chunk(exchange: Exchange, builder: CompletionBuilder) -> dict[str, Any]:
        """The closing chunk of `stream_options.include_usage`, for an upstream that sent none."""
        envelope = builder.envelope
        return {
            "id": exchange.client_id,
            "object": "chat.completion.chunk",
            "created": envelope.get("created"),
            "model": envelope.get("model"),
            "choices": [],
            "usage": builder.usage,
        }

    def _require_provider(self) -> Provider:
        if self._provider is None:
            raise UpstreamNotConfigured(self._unconfigured_reason)
        return self._provider

    def _count_failure(self, provider: Provider, error: ServiceError) -> None:
        """Count what the upstream failed or refused (a refusal passed on to the client too,
        by its kind: the upstream's own codes are not bounded); not this service's refusals."""
        if isinstance(error, UpstreamError) or "upstream_status" in error.details:
            self._metrics.upstream_errors.labels(provider.name, type(error).code).inc()

    @staticmethod
    def _estimate(exchange: Exchange, completion: dict[str, Any]) -> dict[str, int]:
        """Usage counted with a tokenizer, for an upstream that reports none."""
        prompt = tokens.count_prompt(_chat_messages(exchange.upstream_messages))
        answer = sum(
            tokens.count_text(message_text((choice.get("message") or {}).get("content")))
            for choice in completion.get("choices") or ()
        )
        return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}

    def _observe_tokens(self, provider: Provider, usage: Any) -> None:
        if isinstance(usage, dict):
            self._metrics.observe_tokens(provider.name, usage.get("prompt_tokens"), usage.get("completion_tokens"))

    # -- threading -------------------------------------------------------------

    def _prepare(self, owner: str, body: dict[str, Any], provider: Provider) -> Exchange:
        """The request as it goes upstream, and where it will be stored; what is refused
        (a message too long, a model no upstream serves) is refused here, before anything else."""
        self._check_lengths(body["messages"])
        upstream = {key: value for key, value in body.items() if key not in KEPT_HERE}
        upstream["model"] = body.get("model") or provider.default_model
        check_served(provider, upstream["model"])
        store = self._store and body.get("store") is not False
        exchange = Exchange(
            owner=owner,
            body=upstream,
            store=store,
            metadata=body.get("metadata") or {},
            hashes=path_hashes(owner, upstream["messages"]) if store or self._context is not None else [],
            placement=None,
            requested_at=utcnow(),
        )
        if store:
            exchange.placement = self._place(owner, exchange.messages, exchange.hashes)
        exchange.message_ids = [uuid.uuid4() for _ in exchange.messages[exchange.seen :]]
        if self._context is not None:
            self._fit(exchange)
        return exchange

    def _check_lengths(self, messages: list[dict[str, Any]]) -> None:
        """MAX_PROMPT_CHARS, for each message's text (what `ask` applies to its prompt)."""
        limit = self._max_prompt_chars
        if limit is None:
            return
        for index, message in enumerate(messages):
            size = len(message_text(message.get("content")))
            if size > limit:
                raise InvalidRequest(
                    f"messages[{index}].content: at most {limit} characters (MAX_PROMPT_CHARS); this one has {size}.",
                    param=f"messages[{index}].content",
                )

    def _fit(self, exchange: Exchange) -> None:
        """Leave out of what goes upstream the oldest turns the model's window has no room for."""
        assert self._context is not None
        body = exchange.body
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        fitted = fit_messages(
            self._context,
            exchange.messages,
            model=body["model"],
            max_tokens=max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
            seen=exchange.seen,
            keys=exchange.hashes,
            what=f"chat completion {exchange.client_id}",
        )
        if fitted.fitted.changed:
            exchange.sent, exchange.sent_seen, exchange.context = fitted.messages, fitted.seen, fitted.fitted.details()

    def _place(self, owner: str, messages: list[dict[str, Any]], hashes: list[str]) -> Placement | None:
        """Below the deepest stored node the request shares with a stored exchange of the owner.

        An exchange is found by its answer: one of the request's assistant messages (not its
        last message, which is always new) whose path hash is an answer's. Below it, the
        request may repeat more of that conversation's nodes.
        """
        last = len(messages) - 1
        candidates = [hashes[i] for i in range(last) if messages[i].get("role") == "assistant"]
        if not candidates:
            return None
        position = {value: index for index, value in enumerate(hashes)}
        with UnitOfWork(self._db) as uow:
            repo = uow.conversations
            answers = repo.answers_with_hashes(owner, candidates)
            if not answers:
                return None
            anchor = max(answers, key=lambda row: (position[row.path_hash], row.created_at))
            deeper = hashes[position[anchor.path_hash] + 1 : last]
            nodes = [*repo.hashed_nodes(anchor.conversation_id, deeper), anchor] if deeper else [anchor]
            parting = max(nodes, key=lambda row: (position[row.path_hash], row.created_at))
            conversation = repo.owned(owner, anchor.conversation_id)
            if conversation is None:
                return None
            return Placement(
                conversation_id=anchor.conversation_id,
                parent_id=parting.id,
                seen=position[parting.path_hash] + 1,
                upstream_conversation_id=conversation.upstream_id,
                upstream_parent_id=parting.upstream_id,
            )

    # -- storing ---------------------------------------------------------------

    def _save(self, exchange: Exchange, completion: dict[str, Any], event: CompletionEvent, *, finished: bool) -> None:
        """The request's new messages, the answer (a node per choice) and the stored completion,
        in one unit of work; a conversation deleted meanwhile is started anew."""
        now = utcnow()
        owner, placement = exchange.owner, exchange.placement
        with UnitOfWork(self._db) as uow:
            repo = uow.conversations
            if placement is not None and (
                repo.claim(owner, placement.conversation_id, now) is None
                or not repo.has_message(placement.conversation_id, placement.parent_id)
            ):
                placement = None
            if placement is None:
                conversation_id, path = self._asking.new_conversation(repo, owner, exchange.requested_at)
                parent_id, parent_hash = path[-1].id, first_hash(owner)
                new_ids = [uuid.uuid4() for _ in exchange.messages[: exchange.seen]] + exchange.message_ids
                start = 0
            else:
                conversation_id, parent_id = placement.conversation_id, placement.parent_id
                parent_hash, new_ids, start = exchange.hashes[placement.seen - 1], exchange.message_ids, placement.seen
            rows: list[dict[str, Any]] = []
            moment = exchange.requested_at
            for message, message_id, path_hash in zip(exchange.messages[start:], new_ids, exchange.hashes[start:]):
                moment += STEP
                rows.append(_node(message, message_id, conversation_id, parent_id, path_hash, moment))
                parent_id, parent_hash = message_id, path_hash
            if event.upstream_message_id and rows:  # the upstream keeps the last message under our id
                rows[-1]["upstream_id"] = str(new_ids[-1])
            stored = self._answer_rows(exchange, completion, event, conversation_id, parent_id, parent_hash, finished, now)
            rows.extend(stored)
            repo.add_nodes(rows)
            response = {**completion, "choices": [
                {**{k: v for k, v in choice.items() if k != "message"}, "message_id": str(row["id"])}
                for choice, row in zip(completion["choices"], stored)
            ], REQUEST_KEY: {name: exchange.body.get(field) for field, name in REQUEST_FIELDS.items()}}
            repo.add_chat_completion(
                id=exchange.answer_id,
                owner=owner,
                model=exchange.body["model"],
                created_at=now,
                metadata_=exchange.metadata,
                response=response,
            )
            moved: dict[str, Any] = {"current_node_id": exchange.answer_id, "updated_at": now}
            if event.upstream_conversation_id:
                moved["upstream_id"] = event.upstream_conversation_id
            repo.touch(conversation_id, **moved)
            uow.commit()
        dialogue = _chat_messages(exchange.messages)
        if placement is None and self._titles.enabled and dialogue:
            self._titles.submit(
                conversation_id,
                ReplyRequest(
                    messages=dialogue,
                    model=exchange.body["model"],
                    user_message_id=str(new_ids[-1]),
                    upstream_conversation_id=event.upstream_conversation_id,
                ),
                message_text(completion["choices"][0]["message"].get("content")),
            )

    @staticmethod
    def _answer_rows(
        exchange: Exchange,
        completion: dict[str, Any],
        event: CompletionEvent,
        conversation_id: uuid.UUID,
        parent_id: uuid.UUID,
        parent_hash: str,
        finished: bool,
        now: datetime,
    ) -> list[dict[str, Any]]:
        """A node per choice, the first with the stored completion's id, the usage and the
        upstream's message id."""
        usage = completion.get("usage") or {}
        details = {"upstream": event.upstream} if event.upstream else {}
        if exchange.context:
            details["context"] = exchange.context
        rows = []
        for index, choice in enumerate(completion["choices"]):
            message = choice.get("message") or {"role": "assistant", "content": None}
            reason = choice.get("finish_reason")
            done = finished and reason is not None
            first = index == 0
            row = _node(
                message,
                exchange.answer_id if first else uuid.uuid4(),
                conversation_id,
                parent_id,
                next_hash(parent_hash, message),
                now + STEP * index,
                status=FINISHED if done else INTERRUPTED,
                end_turn=reason == "stop",
                model=str(completion.get("model") or exchange.body["model"])[:128],
                finish_details=str(reason if done else "interrupted")[:32],
                upstream_id=event.upstream_message_id if first else None,
                prompt_tokens=usage.get("prompt_tokens") if first else None,
                completion_tokens=usage.get("completion_tokens") if first else None,
                answer_details=details or None,
            )
            rows.append(row)
        return rows

    # -- stored completions ----------------------------------------------------

    def retrieve(self, owner: str, completion_id: uuid.UUID) -> dict[str, Any]:
        return self._stored(owner, completion_id).completion

    def list_stored(
        self,
        owner: str,
        *,
        after: uuid.UUID | None,
        limit: int,
        order: str,
        model: str | None,
        metadata: dict[str, str],
    ) -> Page[dict[str, Any]]:
        """The owner's stored completions by time, `asc` or `desc`, past the completion `after`."""
        with UnitOfWork(self._db) as uow:
            repo = uow.conversations
            cursor = None
            if after is not None:
                cursor = repo.chat_completion(owner, after)
                if cursor is None:
                    raise NotFound(f"after: no stored chat completion {after}.", param="after")
            rows = repo.chat_completion_page(
                owner, limit=limit + 1, descending=order == "desc", after=cursor, model=model, metadata=metadata
            )
            nodes = self._choice_nodes(repo, rows[:limit])
        return Page([_completion(row, nodes) for row in rows[:limit]], len(rows) > limit)

    def messages(
        self, owner: str, completion_id: uuid.UUID, *, after: uuid.UUID | None, limit: int, order: str
    ) -> Page[tuple[uuid.UUID, dict[str, Any]]]:
        """The request's messages (the path down to the answer), each with its node's id."""
        stored = self._stored(owner, completion_id)
        with UnitOfWork(self._db) as uow:
            path = uow.conversations.path(stored.conversation_id, stored.parent_id)
        messages = [(node.id, chat_message(node)) for node in path if node.path_hash is not None]
        return page_of(messages, lambda message: message[0], after=after, limit=limit, order=order)

    def update(self, owner: str, completion_id: uuid.UUID, metadata: dict[str, str]) -> dict[str, Any]:
        """Replace the stored completion's metadata."""
        with UnitOfWork(self._db) as uow:
            if not uow.conversations.set_chat_completion_metadata(owner, completion_id, metadata):
                raise _missing(completion_id)
            uow.commit()
        return self.retrieve(owner, completion_id)

    def delete(self, owner: str, completion_id: uuid.UUID) -> None:
        """The answer (every choice) and whatever continues below it; the request's messages stay.
        An upstream copy of the conversation is hidden first (see `ConversationService.drop_upstream_copy`)."""
        with UnitOfWork(self._db) as uow:
            found = uow.conversations.chat_completion(owner, completion_id)
        if found is None:
            raise _missing(completion_id)
        self._conversations.drop_upstream_copy(owner, found.conversation_id)
        with UnitOfWork(self._db) as uow:
            repo = uow.conversations
            row = repo.chat_completion(owner, completion_id)
            if row is None or repo.claim(owner, row.conversation_id, utcnow()) is None:
                raise _missing(completion_id)
            repo.delete_answers(row.conversation_id, _choice_ids(row), row.parent_id)
            uow.commit()

    def _stored(self, owner: str, completion_id: uuid.UUID) -> StoredCompletion:
        with UnitOfWork(self._db) as uow:
            repo = uow.conversations
            row = repo.chat_completion(owner, completion_id)
            if row is None:
                raise _missing(completion_id)
            nodes = self._choice_nodes(repo, [row])
        return StoredCompletion(_completion(row, nodes), row.conversation_id, row.parent_id)

    @staticmethod
    def _choice_nodes(repo: Any, rows: Sequence[Any]) -> dict[uuid.UUID, Any]:
        wanted = [node_id for row in rows for node_id in _choice_ids(row)]
        return {node.id: node for node in repo.nodes(wanted)} if wanted else {}


def _missing(completion_id: uuid.UUID) -> ChatCompletionNotFound:
    return ChatCompletionNotFound(
        f"No stored chat completion {ids.encode(ids.CHAT_COMPLETION, completion_id)}.", param="completion_id"
    )


def _choice_ids(row: Any) -> list[uuid.UUID]:
    return [uuid.UUID(choice["message_id"]) for choice in row.response.get("choices") or ()]


def _completion(row: Any, nodes: dict[uuid.UUID, Any]) -> dict[str, Any]:
    """A stored completion as OpenAI's `chat.completion`, with its `metadata` and what it says
    of the request (`tools`, `tool_choice`, ...)."""
    response = dict(row.response)
    choices = []
    for choice in response.pop("choices", None) or ():
        node = nodes.get(uuid.UUID(choice["message_id"]))
        shown = {key: value for key, value in choice.items() if key != "message_id"}
        choices.append({**shown, "message": chat_message(node) if node is not None else None})
    response.pop("id", None)
    request = response.pop(REQUEST_KEY, None) or dict.fromkeys(REQUEST_FIELDS.values())
    completion_id = ids.encode(ids.CHAT_COMPLETION, row.id)
    return {"id": completion_id, **response, **request, "choices": choices, "metadata": row.metadata}


def _node(
    message: dict[str, Any],
    node_id: uuid.UUID,
    conversation_id: uuid.UUID,
    parent_id: uuid.UUID,
    path_hash: str,
    created_at: datetime,
    **answer: Any,
) -> dict[str, Any]:
    """A message's row (every column, so rows insert together). A message the columns do not
    hold whole is kept as it came in `original`, inside ChatGPT's message shape, so the six
    routes and export show it as a message and the export keeps all of it."""
    values: dict[str, Any] = {
        "id": node_id,
        "conversation_id": conversation_id,
        "parent_id": parent_id,
        "role": str(message.get("role"))[:16],
        "content": message_text(message.get("content")).replace("\x00", "\ufffd"),
        "status": FINISHED,
        "end_turn": None,
        "model": None,
        "finish_details": None,
        "created_at": created_at,
        "upstream_id": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "answer_details": None,
        "path_hash": path_hash,
        **answer,
        "original": None,
    }
    if not is_plain(message):
        document: dict[str, Any] = dict(message_document(Message(**values)))
        document["metadata"] = {**document.get("metadata", {}), ORIGINAL_KEY: message}
        values["original"] = document
    return values

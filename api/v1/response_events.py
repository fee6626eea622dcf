"""A streamed response in OpenAI's event sequence (a `Writer` for `api.sse.stream_response`).

`response.created`, `response.in_progress`, the output message's `output_item.added` and
`content_part.added` come with the first text; then one `output_text.delta` per piece;
at the end `output_text.done`, `content_part.done`, `output_item.done` and
`response.completed` (or `response.incomplete`). A failure after the first text is a
`response.failed` carrying the error (one before it, once the stream began, an `error`
event). Every event has `type` and an increasing `sequence_number`, written as
`event: <type>` and `data: <json>` lines.
"""

from __future__ import annotations

import json
from typing import Any

from api.errors import as_service_error
from api.v1.schemas import output_item, response_payload
from models.entities import utcnow
from services import ids
from services.asking import Answer, AnswerEvent
from services.responses import ResponseFields, ResponseView, view_of_answer

UNEXPECTED = "Something went wrong on our side."


class ResponseEvents:
    """The events of one response, numbered as they are written."""

    def __init__(self, fields: ResponseFields, *, store: bool) -> None:
        self._fields = fields
        self._store = store
        self._sequence = 0
        self._started = utcnow()
        self._answer: Answer | None = None

    def event(self, event: AnswerEvent) -> str:
        """The events one step of the answer makes (the final step has no new text)."""
        lines = [] if self._answer is not None else self._opening(event.answer)
        self._answer = event.answer
        view = self._view(event.answer)
        item_id = ids.encode(ids.MESSAGE, view.id)
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        if event.delta:
            lines.append(self._write("response.output_text.delta", **where, delta=event.delta, logprobs=[]))
            return "".join(lines)
        item = output_item(view)
        lines += [
            self._write("response.output_text.done", **where, text=view.text, logprobs=[]),
            self._write("response.content_part.done", **where, part=item["content"][0]),
            self._write("response.output_item.done", output_index=0, item=item),
            self._write(f"response.{view.status}", response=response_payload(view, store=self._store)),
        ]
        return "".join(lines)

    def error(self, error: BaseException) -> str:
        service_error = as_service_error(error) if isinstance(error, Exception) else None
        message = service_error.message if service_error is not None else UNEXPECTED
        if self._answer is None:  # broke off before any text, after a keep-alive: nothing to fail
            code = service_error.code if service_error is not None else "internal_error"
            return self._write("error", code=code, message=message, param=None)
        view = self._view(self._answer, failed=message)
        return self._write("response.failed", response=response_payload(view, store=self._store))

    def end(self) -> str:
        return ""

    def _opening(self, answer: Answer) -> list[str]:
        view = self._view(answer)
        opened = response_payload(view, store=self._store, with_output=False)
        item = output_item(view)
        return [
            self._write("response.created", response=opened),
            self._write("response.in_progress", response=opened),
            self._write("response.output_item.added", output_index=0, item={**item, "content": []}),
            self._write(
                "response.content_part.added",
                item_id=item["id"],
                output_index=0,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def _view(self, answer: Answer, failed: str | None = None) -> ResponseView:
        return view_of_answer(answer, self._fields, self._started, failed=failed)

    def _write(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n"

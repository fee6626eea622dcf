"""A streamed Chat Completion put back together, for storing it: the `chat.completion` that
the chunks so far add up to, in the shape the upstream would have answered without `stream`.

Deltas merge generically, so fields this code does not name (`reasoning_content`,
`annotations`, `audio`, ...) are kept too: text is appended, lists extended, objects
merged, tool calls joined by their `index`; identifiers (`role`, `id`, `type`, `name`)
are set, not appended, since some servers repeat them in every chunk.
"""

from __future__ import annotations

from typing import Any

SET_NOT_APPENDED = frozenset({"role", "id", "type", "name"})
ENVELOPE = ("id", "created", "model", "system_fingerprint", "service_tier")


def _merge(target: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        current = target.get(key)
        if key == "tool_calls" and isinstance(value, list):
            target[key] = _merge_calls(current if isinstance(current, list) else [], value)
        elif isinstance(value, str):
            appendable = isinstance(current, str) and key not in SET_NOT_APPENDED
            target[key] = current + value if appendable else value
        elif isinstance(value, dict):
            merged = current if isinstance(current, dict) else {}
            _merge(merged, value)
            target[key] = merged
        elif isinstance(value, list):
            target[key] = (current if isinstance(current, list) else []) + value
        elif value is not None or key not in target:
            target[key] = value


def _merge_calls(calls: list[dict[str, Any]], deltas: list[Any]) -> list[dict[str, Any]]:
    """Tool call deltas joined to the call of the same `index` (a new index is a new call)."""
    for position, delta in enumerate(deltas):
        if not isinstance(delta, dict):
            continue
        index = delta.get("index", position)
        call = next((c for c in calls if c.get("index") == index), None)
        if call is None:
            call = {"index": index}
            calls.append(call)
        _merge(call, delta)
    return calls


class CompletionBuilder:
    """Chunks in, the completion so far out."""

    def __init__(self) -> None:
        self.envelope: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        for key in ENVELOPE:
            if chunk.get(key) is not None:
                self.envelope[key] = chunk[key]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            state = self._choices.setdefault(
                index, {"index": index, "message": {"role": "assistant"}, "logprobs": None, "finish_reason": None}
            )
            if isinstance(choice.get("delta"), dict):
                _merge(state["message"], choice["delta"])
            if isinstance(choice.get("logprobs"), dict):
                state["logprobs"] = state["logprobs"] or {}
                _merge(state["logprobs"], choice["logprobs"])
            if choice.get("finish_reason") is not None:
                state["finish_reason"] = choice["finish_reason"]

    @property
    def finished(self) -> bool:
        """Every choice that began has said how it ended."""
        return bool(self._choices) and all(c["finish_reason"] is not None for c in self._choices.values())

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message = dict(state["message"])
            if isinstance(message.get("tool_calls"), list):
                message["tool_calls"] = [
                    {key: value for key, value in call.items() if key != "index"} for call in message["tool_calls"]
                ]
            choices.append({**state, "message": message})
        completion: dict[str, Any] = {
            "id": self.envelope.get("id"),
            "object": "chat.completion",
            "created": self.envelope.get("created"),
            "model": self.envelope.get("model"),
            "choices": choices,
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in self.envelope:
                completion[key] = self.envelope[key]
        if self.usage is not None:
            completion["usage"] = self.usage
        return completion

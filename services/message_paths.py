"""Chat Completions messages as nodes of the tree: their text, and the hash of the path to them.

A chat UI sends the whole dialogue with every request. Each stored message carries the
hash of the path from the root down to it, `hash(parent's hash, message)`, beginning
with its owner, so the stored node where a request's messages part from what is stored
is found by one indexed lookup of the request's own prefix hashes, and two keys never
share a path. The hash is of a message's canonical form: what a client sends back of
a message it was given (role, text or content parts, name, tool calls, tool call id),
without what clients drop (`refusal: null`, `annotations`, a null content beside tool
calls), so an answer that comes back as history matches the node it was stored as.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

HASH_VERSION = "gpt-api chat path v1"


def message_text(content: Any) -> str:
    """The text of a message's `content`: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def is_plain(message: Mapping[str, Any]) -> bool:
    """A message the tree's own columns hold whole: a role and a string content, nothing else."""
    return set(message) <= {"role", "content"} and isinstance(message.get("content"), str)


def _only_text(content: Any) -> bool:
    return isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    )


def canonical(message: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a message when a client sends it back (see the module's docstring)."""
    content = message.get("content")
    form: dict[str, Any] = {
        "role": message.get("role"),
        "content": message_text(content) if content is None or _only_text(content) else content,
    }
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None:
            form[key] = message[key]
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        form["tool_calls"] = [_call(call) for call in calls]
    if isinstance(message.get("function_call"), dict):
        form["function_call"] = _function(message["function_call"])
    return form


def _call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    return {"id": call.get("id"), "type": call.get("type", "function"), "function": _function(call.get("function"))}


def _function(function: Any) -> Any:
    if not isinstance(function, dict):
        return function
    return {"name": function.get("name"), "arguments": function.get("arguments")}


def next_hash(parent_hash: str, message: Mapping[str, Any]) -> str:
    """The path hash of `message` below a node whose path hash is `parent_hash`."""
    form = json.dumps(canonical(message), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{parent_hash}\n{form}".encode()).hexdigest()


def first_hash(owner: str) -> str:
    """Where every path of `owner` begins: the parent hash of a dialogue's first message."""
    return hashlib.sha256(f"{HASH_VERSION}\n{owner}".encode()).hexdigest()


def path_hashes(owner: str, messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The path hash of each message of a request, in order."""
    hashes: list[str] = []
    current = first_hash(owner)
    for message in messages:
        current = next_hash(current, message)
        hashes.append(current)
    return hashes

"""Answers written by `JSONProvider.plain_response` are byte for byte what Flask's `jsonify` writes."""

from __future__ import annotations

import math
from typing import Any

import pydantic_core
import pytest
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from api.bodies import JSONProvider


def _app_with_our_provider(debug: bool) -> Flask:
    app = Flask(__name__)
    app.debug = debug
    app.json = JSONProvider(app)
    return app


_APPS = {debug: _app_with_our_provider(debug) for debug in (False, True)}
"""Kept for the module's lifetime: a provider holds its app weakly, and an app made inside
`provider()` could be collected before the provider was used (a flaky ReferenceError)."""


def provider(*, debug: bool = False) -> JSONProvider:
    json = _APPS[debug].json
    assert isinstance(json, JSONProvider)
    return json


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=1e-10, max_value=2e-4)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
"""JSON's own types, with the floats where pydantic_core and the standard library write different text."""


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
def test_the_same_bytes_as_flask_for_any_json_value(value: Any) -> None:
    json = provider()
    fast, standard = json.plain_response(value), json.response(value)
    assert fast.data == standard.data
    assert fast.headers == standard.headers


@pytest.mark.parametrize(
    "number",
    [1e-5, -1e-5, 1.2345e-05, 9.99e-5, 1e-6, 1.5e-7, 1e-9, 2.5e-9, 1e-10, 1e-4, 0.0, -0.0, 1e16, 1e22, 1.0,
     1718000000.123456, math.inf, -math.inf, math.nan],
)
def test_floats_written_as_python_writes_them(number: float) -> None:
    json = provider()
    for value in (number, [number], {"a": number}, [number, 1], {"create_time": number, "b": [number]}):
        assert json.plain_response(value).data == json.response(value).data


def test_small_floats_are_found_in_the_fast_output() -> None:
    """The searches are what keeps the bytes equal: without them these would differ."""
    for number in (1e-5, 1.5e-7, -2e-9):
        fast = pydantic_core.to_json({"x": [number]})
        assert fast != provider().dumps({"x": [number]}, separators=(",", ":")).encode()
        assert provider().plain_response({"x": [number]}).data == provider().response({"x": [number]}).data


@pytest.mark.parametrize("number", [1e-5, 1e-9, 9.999999999999999e-05, 1e-4, 9.999999999999999e-10, 1.0])
def test_numbers_named_by_the_caller_are_checked_instead_of_searched(number: float) -> None:
    json = provider()
    value = {"create_time": number, "text": "looks like 1e-5, or 0.00001"}
    assert json.plain_response(value, numbers=[number]).data == json.response(value).data
    assert json.plain_response(value).data == json.response(value).data


def test_debug_mode_indents_as_flask_does() -> None:
    json = provider(debug=True)
    value = {"response": {"title": "标题", "mapping": {"a": [1.0, None, True]}}}
    assert json.plain_response(value).data == json.response(value).data
    assert b"\n  " in json.plain_response(value).data

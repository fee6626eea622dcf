"""What a request works with: the app's services and the caller, as typed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flask import current_app, g
from flask_openapi3 import OpenAPI

from api.bodies import JSONProvider, JSONRequest
from services.container import Services


@dataclass(frozen=True)
class Caller:
    """Who is asking: `owner` of the conversations the request may see ("" for the
    anonymous caller), and the API key's name (None without a key)."""

    owner: str
    key_name: str | None = None


ANONYMOUS = Caller(owner="")


class GptApi(OpenAPI):
    """The Flask app, holding its services."""

    json_provider_class = JSONProvider
    request_class = JSONRequest
    services: Services


def services() -> Services:
    return cast(GptApi, current_app).services


def current_caller() -> Caller:
    """Set by authentication before every /api route."""
    return cast(Caller, g.get("caller", ANONYMOUS))


def set_caller(caller: Caller) -> None:
    g.caller = caller

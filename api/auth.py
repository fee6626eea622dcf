"""Who is calling: the API key sent as `Authorization: Bearer <key>`, checked before every /api route.

While no key exists the caller is anonymous (owner ""), but only on a server that listens on
loopback or was explicitly allowed to serve without keys; anywhere else every request is
refused, so revoking the last key never opens the API to the network.
"""

from __future__ import annotations

import ipaddress
import socket

from flask import Flask, request

from api.context import ANONYMOUS, Caller, set_caller

from config import Settings
from services.api_keys import KEY_PREFIX, KeyRing
from services.errors import Unauthenticated


def is_api_request() -> bool:
    """The routes that need a caller: the six under /api and OpenAI's surface under /v1."""
    return request.path.startswith(("/api/", "/v1/")) or request.path in ("/api", "/v1")


def is_loopback(host: str) -> bool:
    """True when every address `host` names is on this machine only."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    except (OSError, ValueError):
        return False


def may_serve_without_keys(settings: Settings) -> bool:
    return settings.allow_unauthenticated or is_loopback(settings.host)


def refusal(settings: Settings, keys: KeyRing) -> str | None:
    """Why the server must not start (no key, and reachable from the network), or None."""
    if may_serve_without_keys(settings) or keys.any():
        return None
    return (
        f"Refusing to serve on {settings.host}:{settings.port}: no API key exists, so anyone "
        "who can reach that address could read and delete every conversation. Create a key "
        "(python app.py keys create NAME), listen on 127.0.0.1, or set "
        "ALLOW_UNAUTHENTICATED=true to serve without keys anyway."
    )


def bearer_key() -> str | None:
    credentials = request.authorization
    if credentials is None or credentials.type != "bearer" or not credentials.token:
        return None
    return credentials.token


def register_auth(app: Flask, keys: KeyRing, *, open_without_keys: bool) -> None:
    """Set the request's `Caller` (see `api.context`) before every /api route."""

    def sdk_placeholder(key: str) -> bool:
        """OpenAI's SDKs cannot leave the key out: on a server that needs none, a key sent to
        /v1 that is no key of ours stands for no key (`api_key="none"`, as with Ollama)."""
        return (
            open_without_keys
            and request.path.startswith("/v1/")
            and not key.startswith(KEY_PREFIX)
            and not keys.any()
        )

    @app.before_request
    def authenticate() -> None:
        if request.method == "OPTIONS" or not is_api_request():
            return  # CORS preflights carry no credentials
        key = bearer_key()
        if key is not None and not sdk_placeholder(key):  # a key given is checked even while none is needed
            name = keys.owner_of(key)
            if name is None:
                raise Unauthenticated("The API key is not valid (unknown or revoked).")
            set_caller(Caller(owner=name, key_name=name))
        elif keys.any():
            raise Unauthenticated("This API needs a key: send the header 'Authorization: Bearer <key>'.")
        elif not open_without_keys:
            raise Unauthenticated(
                "No API key exists yet; create one with `python app.py keys create NAME`."
            )
        else:
            set_caller(ANONYMOUS)

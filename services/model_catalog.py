"""The models the upstream offers (`GET /v1/models`), asked for at most once a minute or so."""

from __future__ import annotations

import threading
import time
from typing import Any

from services.errors import ModelNotFound, UpstreamNotConfigured
from services.providers.base import Provider


class ModelCatalog:
    """The upstream's list of models, kept for `ttl` seconds: chat UIs ask for it on every page."""

    def __init__(self, provider: Provider | None, *, ttl: float, unconfigured_reason: str = "") -> None:
        self._provider = provider
        self._ttl = ttl
        self._unconfigured_reason = unconfigured_reason
        self._lock = threading.Lock()
        self._models: list[dict[str, Any]] = []
        self._expires = 0.0

    def models(self) -> list[dict[str, Any]]:
        if self._provider is None:
            raise UpstreamNotConfigured(self._unconfigured_reason)
        with self._lock:  # one caller asks the upstream; the others wait for its answer
            if time.monotonic() >= self._expires:
                self._models = self._provider.list_models()
                self._expires = time.monotonic() + self._ttl
            return self._models

    def model(self, model_id: str) -> dict[str, Any]:
        found = next((model for model in self.models() if model["id"] == model_id), None)
        if found is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
        return found

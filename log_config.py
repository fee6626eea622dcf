"""Process-wide logging: plain text for people, or one JSON object per line (`LOG_FORMAT=json`)."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

from api.request_log import RequestIdFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai")


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """Log to stderr at `level`; every line logged during a request carries its request id."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter(missing=None if log_format == "json" else "-"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # The HTTP clients log every request to the upstream at INFO: a line per answer that
    # repeats the request log and costs a formatted write on the hot path (LOG_LEVEL=debug keeps it).
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING)

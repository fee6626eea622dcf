"""gpt-api: `python app.py` serves; `python app.py --help` lists the other commands.

`create_app()` builds the WSGI app for any server (`gunicorn 'app:create_app()'`); the
command line lives in `cli.py`, the production servers in `serving.py`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.platform != "win32":
    # gevent must patch the standard library before anything imports sockets or ssl.
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()

from api.auth import may_serve_without_keys, register_auth
from api.chat import bp as chat_bp
from api.context import GptApi
from api.docs import bp as docs_bp
from api.errors import invalid_body, register_error_handlers
from api.hardening import register_hardening
from api.limits import register_limits
from api.openapi import openapi_options
from api.ops import bp as ops_bp
from api.request_log import register_request_log
from api.search import bp as search_bp
from api.web import bp as web_bp
from api.v1.chat_completions import bp as v1_chat_completions_bp
from api.v1.models import bp as v1_models_bp
from api.v1.conversations import bp as v1_conversations_bp
from api.v1.responses import bp as v1_responses_bp
from config import INSTANCE_DIR, Settings
from services.container import Services, build_services


def create_app(settings: Settings | None = None, services: Services | None = None) -> GptApi:
    """Build the service: its parts from `settings` (or the given ones), then the routes."""
    settings = settings or Settings()
    app = GptApi(
        __name__,
        instance_path=str(INSTANCE_DIR),
        validation_error_callback=invalid_body,
        **openapi_options(),
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.services = services or build_services(settings)
    app.register_api(chat_bp)
    app.register_api(search_bp)
    app.register_api(ops_bp)
    app.register_api(docs_bp)
    if settings.web_ui:
        app.register_api(web_bp)
    app.register_api(v1_chat_completions_bp)
    app.register_api(v1_models_bp)
    app.register_api(v1_responses_bp)
    app.register_api(v1_conversations_bp)
    register_error_handlers(app)
    register_request_log(app)
    register_auth(app, app.services.keys, open_without_keys=may_serve_without_keys(settings))
    register_limits(app, settings)
    register_hardening(app, settings.cors_origins)
    return app


if __name__ == "__main__":
    from cli import cli

    cli()

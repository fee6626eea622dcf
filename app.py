"""gpt-api: `python app.py` serves; `python app.py --help` lists the other commands."""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.platform != "win32":
    # gevent must patch the standard library before anything imports sockets or ssl.
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()

import logging

import click
from dotenv import load_dotenv
from flask import Flask

from api.chat import bp as chat_bp
from api.errors import register_error_handlers
from api.health import bp as health_bp
from api.request_log import register_request_log
from config import INSTANCE_DIR, Settings
from models.db import Database
from services.conversations import ConversationService
from services.errors import UpstreamNotConfigured
from services.providers import build_provider

log = logging.getLogger("gpt_api")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the service: database (migrated), provider, conversation service, routes."""
    settings = settings or Settings()
    app = Flask(__name__, instance_path=str(INSTANCE_DIR))
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SSE_KEEP_ALIVE=settings.sse_keep_alive_seconds,
        SETTINGS=settings,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]

    db = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    if settings.migrate_on_start:
        db.migrate()
    try:
        provider, reason = build_provider(settings), ""
    except UpstreamNotConfigured as error:
        provider, reason = None, error.message
        log.warning("%s 'ask' answers 503 until then.", reason)
    app.extensions["database"] = db
    app.extensions["conversations"] = ConversationService(
        db,
        provider,
        unconfigured_reason=reason,
        system_prompt=settings.system_prompt,
        generate_titles=settings.generate_titles,
    )
    app.register_blueprint(chat_bp)
    app.register_blueprint(health_bp)
    register_error_handlers(app)
    register_request_log(app)
    return app


@click.group(invoke_without_command=True)
@click.pass_context
def cli(context: click.Context) -> None:
    """Without a command: serve the API."""
    load_dotenv()
    logging.basicConfig(
        level=Settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if context.invoked_subcommand is None:
        context.invoke(serve)


@cli.command()
def serve() -> None:
    """Serve the API on HOST:PORT with a production WSGI server."""
    settings = Settings()
    app = create_app(settings)
    log.info("serving on http://%s:%s", settings.host, settings.port)
    if sys.platform == "win32":
        serve_with_waitress(app, settings)
    else:
        serve_with_gunicorn(app, settings)


def serve_with_gunicorn(app: Flask, settings: Settings) -> None:
    """gunicorn with gevent workers: thousands of open streams per process.

    The app is built once, before the workers fork (so migrations run once); each
    worker then drops the database connections it inherited.
    """
    from gunicorn.app.base import BaseApplication

    def post_fork(_server: object, _worker: object) -> None:
        app.extensions["database"].engine.dispose(close=False)

    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gevent",
        "worker_connections": settings.worker_connections,
        "graceful_timeout": 30,
        "keepalive": 5,
        "post_fork": post_fork,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,  # one line per request comes from the app itself
        "control_socket_disable": True,  # instances on one machine would share its path
    }

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    Server().run()


def serve_with_waitress(app: Flask, settings: Settings) -> None:
    """Windows has no fork and no gevent worker: waitress, a pure-Python threaded server."""
    import waitress

    waitress.serve(app, host=settings.host, port=settings.port, threads=settings.worker_connections)


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema, then exit."""
    settings = Settings()
    db = Database(settings.database_url)
    db.migrate()
    db.dispose()
    click.echo("database schema is current")


if __name__ == "__main__":
    cli()

"""gpt-api: `python app.py` serves; `python app.py --help` lists the other commands."""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.platform != "win32":
    # gevent must patch the standard library before anything imports sockets or ssl.
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()

import gc
import logging
import os
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import IO, TypeVar

import click
import ijson
from dotenv import load_dotenv
from flask import Flask
from tqdm import tqdm

from api.auth import may_serve_without_keys, refusal, register_auth
from api.chat import bp as chat_bp
from api.docs import bp as docs_bp
from api.errors import register_error_handlers
from api.hardening import register_hardening
from api.limits import register_limits
from api.ops import bp as ops_bp
from api.request_log import register_request_log
from api.search import bp as search_bp
from config import INSTANCE_DIR, Settings
from log_config import configure_logging
from models.db import Database
from models.search import reindex
from services.api_keys import ApiKeys, KeyRing
from services.conversations import ConversationService
from services.errors import ServiceError, UpstreamNotConfigured
from services.metrics import Metrics, mark_process_dead, prepare_multiprocess
from services.providers import build_provider
from services.transfer import ConversationTransfer, read_export

log = logging.getLogger("gpt_api")
T = TypeVar("T")


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
        timeout=settings.db_timeout,
    )
    if settings.migrate_on_start:
        db.migrate(search_language=settings.search_language)
    try:
        provider, reason = build_provider(settings), ""
    except UpstreamNotConfigured as error:
        provider, reason = None, error.message
        log.warning("%s 'ask' answers 503 until then.", reason)
    app.extensions["database"] = db
    app.extensions["metrics"] = metrics = Metrics()
    app.extensions["conversations"] = ConversationService(
        db,
        provider,
        unconfigured_reason=reason,
        system_prompt=settings.system_prompt,
        generate_titles=settings.generate_titles,
        metrics=metrics,
        max_prompt_chars=settings.max_prompt_chars,
    )
    app.register_blueprint(chat_bp)
    app.register_blueprint(search_bp)
    app.register_blueprint(ops_bp)
    app.register_blueprint(docs_bp)
    register_error_handlers(app)
    register_request_log(app)
    app.extensions["api_keys"] = keys = KeyRing(db, settings.auth_cache_seconds)
    register_auth(app, keys, open_without_keys=may_serve_without_keys(settings))
    register_limits(app, settings)
    register_hardening(app, settings.cors_origins)
    return app


@click.group(invoke_without_command=True)
@click.pass_context
def cli(context: click.Context) -> None:
    """Without a command: serve the API."""
    load_dotenv()
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if context.invoked_subcommand is None:
        context.invoke(serve)


@cli.command()
def serve() -> None:
    """Serve the API on HOST:PORT with a production WSGI server."""
    settings = Settings()
    if sys.platform != "win32":  # forked workers share their metrics through files
        prepare_multiprocess(settings.prometheus_multiproc_dir)
    app = create_app(settings)
    reason = refusal(settings, app.extensions["api_keys"])
    if reason:
        raise click.ClickException(reason)
    log.info("serving on http://%s:%s", settings.host, settings.port)
    if sys.platform == "win32":
        serve_with_waitress(app, settings)
    else:
        raise_open_files_limit(settings)
        serve_with_gunicorn(app, settings)


def raise_open_files_limit(settings: Settings) -> None:
    """Lift the soft limit on open files to the hard one; workers inherit it.

    Each open stream holds two sockets (the client's and the upstream's), and the usual
    soft limit of 1024 would stop a worker at about 500 streams.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    needed = 2 * settings.worker_connections + settings.db_pool_size + settings.db_max_overflow + 64
    log.info(
        "%d workers x %d connections; database pool %d+%d per worker; open files %s per worker",
        settings.workers,
        settings.worker_connections,
        settings.db_pool_size,
        settings.db_max_overflow,
        "unlimited" if soft == resource.RLIM_INFINITY else soft,
    )
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "open files limit %d < %d that WORKER_CONNECTIONS=%d needs; raise `ulimit -n`",
            soft,
            needed,
            settings.worker_connections,
        )


def serve_with_gunicorn(app: Flask, settings: Settings) -> None:
    """gunicorn with gevent workers: thousands of open streams per process, each a
    greenlet rather than a thread (bench/README.md has the figures beside gthread).

    The app is built once, before the workers fork (so migrations run once); each
    worker then drops the database connections it inherited.
    """
    import gevent
    from gunicorn.app.base import BaseApplication

    def post_fork(_server: object, _worker: object) -> None:
        app.extensions["database"].engine.dispose(close=False)

    def post_request(_worker: object, _request: object, _environ: object, _response: object) -> None:
        # A keep-alive client whose next request is already waiting would be served again
        # without the worker ever yielding, and the other connections would starve.
        gevent.sleep(0)

    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gevent",
        "worker_connections": settings.worker_connections,
        "graceful_timeout": 30,
        "keepalive": 5,
        "post_fork": post_fork,
        "post_request": post_request,
        "child_exit": lambda _server, worker: mark_process_dead(worker.pid),
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

    # Everything built so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise scan it again and again (a 1,000-message
    # history: 31 ms of CPU per request without this, 19 with it; p99 126 ms -> 23 ms).
    gc.freeze()
    Server().run()


def serve_with_waitress(app: Flask, settings: Settings) -> None:
    """Windows has no fork and no gevent worker: waitress, a pure-Python threaded server.

    A thread per request in progress (an open stream holds one, and its answer another):
    waitress starts them all up front, so at most 1000.
    """
    import waitress

    threads = min(settings.worker_connections, 1000)
    waitress.serve(app, host=settings.host, port=settings.port, threads=threads)


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema, then exit."""
    with migrated_database():
        click.echo("database schema is current")


@contextmanager
def migrated_database() -> Iterator[Database]:
    settings = Settings()
    database = Database(settings.database_url)
    try:
        database.migrate(search_language=settings.search_language)
        yield database
    finally:
        database.dispose()


@cli.group()
def keys() -> None:
    """API keys: once one exists, every /api request needs one, and sees only its own conversations."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--adopt-anonymous",
    is_flag=True,
    help="Give NAME the conversations made before keys were used (no key sees them otherwise).",
)
def create_key(name: str, adopt_anonymous: bool) -> None:
    """Make a key for NAME and print it; it is shown this once and stored only hashed."""
    with migrated_database() as database:
        try:
            made = ApiKeys(database).create(name, adopt_anonymous=adopt_anonymous)
        except ServiceError as error:
            raise click.ClickException(error.message) from error
    click.echo(made.key)
    if adopt_anonymous:
        click.echo(f"{made.adopted} conversation(s) now belong to '{name}'.", err=True)
    click.echo(
        f"This is the key for '{name}'; it is not shown again. "
        "Send it as 'Authorization: Bearer <key>'.",
        err=True,
    )


@keys.command("list")
def list_keys() -> None:
    """Show every key by name, with when it was made and revoked (never the key itself)."""
    with migrated_database() as database:
        found = ApiKeys(database).list()
    if not found:
        click.echo("No keys: the API serves anyone who can reach it (loopback only by default).")
    for key in found:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        click.echo(f"{key.name}\tcreated {key.created_at:%Y-%m-%d %H:%M}\t{status}")


@keys.command("revoke")
@click.argument("name")
def revoke_key(name: str) -> None:
    """Revoke NAME's key (every instance refuses it within AUTH_CACHE_SECONDS); its
    conversations stay, for a new key made under the same name."""
    with migrated_database() as database:
        try:
            ApiKeys(database).revoke(name)
        except ServiceError as error:
            raise click.ClickException(error.message) from error
    click.echo(f"Revoked the key of '{name}'.")


@cli.group("search")
def search_group() -> None:
    """The full-text search index."""


@search_group.command("reindex")
def reindex_command() -> None:
    """Index every message and title again with SEARCH_LANGUAGE (run it after changing that
    setting), a batch at a time, while the service keeps serving."""
    language = Settings().search_language
    with migrated_database() as database:
        try:
            reindex(database.engine, language)
        except ValueError as error:
            raise click.ClickException(str(error)) from error
    click.echo(f"search index rebuilt with language '{language}'", err=True)


@cli.command("export")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--owner", default="", help="Whose conversations: an API key's name (default: the anonymous caller's).")
@click.option("--all-owners", is_flag=True, help="Every owner's conversations in one file.")
def export_command(path: str, owner: str, all_owners: bool) -> None:
    """Write conversations to PATH (- for stdout) as ChatGPT's data export writes conversations.json."""
    with migrated_database() as database, click.open_file(path, "w", encoding="utf-8") as out:
        count = ConversationTransfer(database, owner).export_conversations(out, every_owner=all_owners)
    click.echo(f"exported {count} conversation(s)", err=True)


@cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--owner", default="", help="Who gets the conversations: an API key's name (default: the anonymous caller).")
def import_command(path: str, owner: str) -> None:
    """Read ChatGPT's data export (its conversations.json, or the .zip it came in); again is harmless."""
    with ExitStack() as stack:
        if zipfile.is_zipfile(path):
            archive = stack.enter_context(zipfile.ZipFile(path))
            try:
                member = archive.getinfo("conversations.json")
            except KeyError:
                raise click.ClickException(f"{path} has no conversations.json") from None
            raw, size = stack.enter_context(archive.open(member)), member.file_size
        else:
            raw, size = stack.enter_context(open(path, "rb")), os.path.getsize(path)
        database = stack.enter_context(migrated_database())
        bar = stack.enter_context(
            tqdm(total=size, desc="importing", unit="B", unit_scale=True, file=sys.stderr)
        )
        try:
            conversations = with_progress(read_export(raw), raw, bar)
            report = ConversationTransfer(database, owner).import_conversations(conversations)
        except ijson.JSONError as error:
            raise click.ClickException(f"{path} is not valid JSON: {error}") from error
    click.echo(
        f"imported {report.conversations} conversation(s) with {report.messages} message(s); "
        f"{report.already_present} already present, {report.invalid} not conversations"
        + (f", {report.dropped_nodes} unreachable node(s) left out" if report.dropped_nodes else ""),
        err=True,
    )


def with_progress(items: Iterator[T], source: IO[bytes], bar: tqdm) -> Iterator[T]:  # type: ignore[type-arg]
    """`items` unchanged, moving `bar` to how far into `source` the reader has got."""
    for item in items:
        bar.update(source.tell() - bar.n)
        yield item
    bar.update(bar.total - bar.n)


if __name__ == "__main__":
    cli()

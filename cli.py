"""The command line: serve (the default), migrate, keys, export, import.

`python app.py` runs it; every command builds the settings once and passes them down.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import IO, TypeVar

import click
from tqdm import tqdm

from api.auth import refusal
from app import create_app
from config import Settings
from log_config import configure_logging
from models.db import Database
from models.search_indexing import reindex
from services.api_keys import ApiKeys
from services.errors import ServiceError
from services.metrics import prepare_multiprocess
from services.transfer import ConversationTransfer, ExportBrokenOff, ImportReport, NotAnExport, read_export
from serving import serve as serve_app

T = TypeVar("T")
pass_settings = click.make_pass_decorator(Settings)


@click.group(invoke_without_command=True)
@click.pass_context
def cli(context: click.Context) -> None:
    """Without a command: serve the API."""
    context.obj = settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if context.invoked_subcommand is None:
        context.invoke(serve)


@cli.command()
@pass_settings
def serve(settings: Settings) -> None:
    """Serve the API on HOST:PORT with a production WSGI server."""
    if sys.platform != "win32":  # forked workers share their metrics through files
        prepare_multiprocess(settings.prometheus_multiproc_dir)
    app = create_app(settings)
    reason = refusal(settings, app.services.keys)
    if reason:
        raise click.ClickException(reason)
    serve_app(app, settings, app.services.database)


@cli.command()
@pass_settings
def migrate(settings: Settings) -> None:
    """Create or upgrade the database schema, then exit."""
    with migrated_database(settings):
        click.echo("database schema is current")


@contextmanager
def migrated_database(settings: Settings) -> Iterator[Database]:
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
@pass_settings
def create_key(settings: Settings, name: str, adopt_anonymous: bool) -> None:
    """Make a key for NAME and print it; it is shown this once and stored only hashed."""
    with migrated_database(settings) as database:
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
@pass_settings
def list_keys(settings: Settings) -> None:
    """Show every key by name, with when it was made and revoked (never the key itself)."""
    with migrated_database(settings) as database:
        found = ApiKeys(database).list()
    if not found:
        click.echo("No keys: the API serves anyone who can reach it (loopback only by default).")
    for key in found:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        click.echo(f"{key.name}\tcreated {key.created_at:%Y-%m-%d %H:%M}\t{status}")


@keys.command("revoke")
@click.argument("name")
@pass_settings
def revoke_key(settings: Settings, name: str) -> None:
    """Revoke NAME's key (every instance refuses it from the next request on); its
    conversations stay, for a new key made under the same name."""
    with migrated_database(settings) as database:
        try:
            ApiKeys(database).revoke(name)
        except ServiceError as error:
            raise click.ClickException(error.message) from error
    click.echo(f"Revoked the key of '{name}'.")


@cli.group("search")
def search_group() -> None:
    """The full-text search index."""


@search_group.command("reindex")
@pass_settings
def reindex_command(settings: Settings) -> None:
    """Index every message and title again with SEARCH_LANGUAGE (run it after changing that
    setting), a batch at a time, while the service keeps serving."""
    with migrated_database(settings) as database:
        try:
            reindex(database.engine, settings.search_language)
        except ValueError as error:
            raise click.ClickException(str(error)) from error
    click.echo(f"search index rebuilt with language '{settings.search_language}'", err=True)


@cli.command("export")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--owner", default="", help="Whose conversations: an API key's name (default: the anonymous caller's).")
@click.option("--all-owners", is_flag=True, help="Every owner's conversations in one file.")
@pass_settings
def export_command(settings: Settings, path: str, owner: str, all_owners: bool) -> None:
    """Write conversations to PATH (- for stdout) as ChatGPT's data export writes conversations.json."""
    with migrated_database(settings) as database, click.open_file(path, "w", encoding="utf-8") as out:
        count = ConversationTransfer(database, owner).export_conversations(out, every_owner=all_owners)
    click.echo(f"exported {count} conversation(s)", err=True)


@cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--owner", default="", help="Who gets the conversations: an API key's name (default: the anonymous caller).")
@pass_settings
def import_command(settings: Settings, path: str, owner: str) -> None:
    """Read ChatGPT's data export (its conversations.json, the .zip it came in, or a file of
    one conversation); again is harmless, and completes an import that broke off."""
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
        database = stack.enter_context(migrated_database(settings))
        bar = stack.enter_context(
            tqdm(total=size, desc="importing", unit="B", unit_scale=True, file=sys.stderr)
        )
        try:
            entries = with_progress(read_export(raw), raw, bar)
            report = ConversationTransfer(database, owner).import_conversations(entries)
        except NotAnExport as error:
            raise click.ClickException(f"{path}: {error}") from error
        except ExportBrokenOff as broken:
            bar.close()
            if broken.index:
                tell(broken.report)
            done = broken.report.conversations + broken.report.already_present
            raise click.ClickException(
                f"{path} is not valid JSON from entry [{broken.index}] on; "
                + (
                    f"the {done} conversation(s) before it are in the database. Import the complete "
                    "file again to add the rest: those already here are skipped."
                    if done
                    else "nothing was imported."
                )
                + f"\n{broken.reason.rstrip()}"
            ) from broken
    tell(report)


def tell(report: ImportReport) -> None:
    """What an import did, on stderr; each entry left out by its position and title."""
    for skipped in report.skipped:
        title = json.dumps(skipped.title, ensure_ascii=False) if skipped.title is not None else "(no title)"
        click.echo(f"skipped entry [{skipped.index}] {title}: {skipped.reason}", err=True)
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

"""ChatGPT's data export in and out: lossless round trips, idempotent imports, continuing
an imported conversation, and imports of large files in bounded memory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select

from cli import cli
from fakes.openai_upstream import FakeOpenAI, Reply
from models.entities import Conversation, Message
from services.api_keys import ApiKeys
from services.transfer import BATCH_CONVERSATIONS, ConversationTransfer, read_export
from services.unit_of_work import UnitOfWork
from tests import launcher
from tests.helpers import ask, check_tree, history, messages_scans_and_inserts, messages_scans_once_reported, ok, post
from tests.server_process import PROJECT_ROOT

EXPORT = Path(__file__).parent / "data" / "chatgpt_export.json"
CAPITALS = "6752f0a1-3c4e-8007-9a1b-2f7e4d5c6b01"
GREAT_WALL = "6752f0a1-3c4e-8007-9a1b-2f7e4d5c6b02"
TOOLS = "6752f0a1-3c4e-8007-9a1b-2f7e4d5c6b03"


def by_id(conversations: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {conversation["id"]: conversation for conversation in conversations}


def import_file(app: Flask, path: Path = EXPORT, owner: str = "") -> Any:
    with path.open("rb") as stream:
        return ConversationTransfer(app.services.database, owner).import_conversations(read_export(stream))


def export_all(app: Flask, owner: str = "") -> list[dict[str, Any]]:
    out = io.StringIO()
    ConversationTransfer(app.services.database, owner).export_conversations(out)
    return json.loads(out.getvalue())


def count_rows(app: Flask) -> tuple[int, int]:
    with UnitOfWork(app.services.database) as uow:
        return (
            uow.session.scalar(select(func.count()).select_from(Conversation)) or 0,
            uow.session.scalar(select(func.count()).select_from(Message)) or 0,
        )


def test_the_sample_export_round_trips_unchanged(app: Flask) -> None:
    original = json.loads(EXPORT.read_text(encoding="utf-8"))
    report = import_file(app)
    assert (report.conversations, report.messages, report.invalid) == (3, 24, 0)
    exported = export_all(app)
    assert by_id(exported) == by_id(original)  # ids, titles, times, every branch, current nodes
    for conversation in exported:
        assert list(conversation) == list(by_id(original)[conversation["id"]])  # key order too
    capitals = by_id(exported)[CAPITALS]["mapping"]
    assert "client-created-root" in capitals
    assert sorted(len(node["children"]) for node in capitals.values()) == [0, 0, 0, 1, 1, 2, 2]


def test_importing_again_adds_nothing(app: Flask) -> None:
    import_file(app)
    before = count_rows(app)
    report = import_file(app)
    assert (report.conversations, report.already_present) == (0, 3)
    assert count_rows(app) == before == (3, 24)


def test_an_imported_conversation_in_history_uses_the_services_ids(app: Flask, client: FlaskClient) -> None:
    import_file(app)
    tree = history(client, CAPITALS)
    check_tree(tree["mapping"])
    for node_id in tree["mapping"]:
        uuid.UUID(node_id)  # `client-created-root` has a UUID here, usable as parent_id
    original = by_id(json.loads(EXPORT.read_text(encoding="utf-8")))[CAPITALS]
    assert tree["title"] == "Capital cities"
    assert tree["create_time"] == original["create_time"]
    assert tree["current_node"] == original["current_node"]
    listed = ok(post(client, "conversation", {}))
    assert [c["title"] for c in listed] == ["Parabola fit and browsing", "长城简介", "Capital cities"]

    tools = history(client, TOOLS)["mapping"]
    kinds = sorted(
        node["message"]["content"]["content_type"] for node in tools.values() if node.get("message")
    )
    assert kinds == [
        "code", "execution_output", "multimodal_text", "tether_browsing_display", "text", "text", "text", "text",
    ]
    models = {node["message"]["metadata"].get("model_slug") for node in tools.values() if node.get("message")}
    assert {"gpt-4o", "gpt-4"} <= models


def test_an_imported_conversation_continues_with_ask(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    import_file(app)
    fake_upstream.script(Reply(text="八达岭在北京。"))
    answer = ask(client, "八达岭在哪里？", convo_id=GREAT_WALL)
    assert fake_upstream.requests[0].body["messages"] == [  # hidden context and empty system left out
        {"role": "user", "content": "你好！请用两句话介绍一下长城。"},
        {"role": "assistant", "content": "长城是中国古代修建的军事防御工程，总长度超过两万公里。它始建于春秋战国时期，明朝时期的长城保存最为完整。"},
        {"role": "user", "content": "它在哪个朝代修建得最多？"},
        {"role": "assistant", "content": "明朝修建的长城规模最大，我们今天看到的八达岭、慕田峪等段落大多是明长城。"},
        {"role": "user", "content": "八达岭在哪里？"},
    ]
    tree = history(client, GREAT_WALL)
    assert tree["current_node"] == answer["parent_id"]
    question = tree["mapping"][answer["parent_id"]]["parent"]
    assert tree["mapping"][question]["parent"] == "5abe0d9c-aaaa-4b80-8f6d-6d7e8f9a0b02"

    exported = by_id(export_all(app))[GREAT_WALL]  # the old nodes come back unchanged
    original = by_id(json.loads(EXPORT.read_text(encoding="utf-8")))[GREAT_WALL]
    for key, node in original["mapping"].items():
        if key != "5abe0d9c-aaaa-4b80-8f6d-6d7e8f9a0b02":
            assert exported["mapping"][key] == node
    assert exported["current_node"] == answer["parent_id"]
    assert exported["update_time"] > original["update_time"]


def test_tool_calls_and_outputs_are_not_sent_upstream(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    import_file(app)
    ask(client, "Thanks!", convo_id=TOOLS)
    assert fake_upstream.requests[0].body["messages"] == [
        {"role": "user", "content": "Here is a photo of my sales chart. Fit a parabola y = a·x² to it and plot it."},
        {"role": "assistant", "content": "Here is the fitted parabola y = 1.5·x²."},
        {"role": "user", "content": "What do news sites say about parabolic trends?"},
        {"role": "assistant", "content": "News sites describe a parabolic trend as a sharp, accelerating rise【0†source】."},
        {"role": "user", "content": "Thanks!"},
    ]


def test_a_branch_can_start_from_an_imported_message(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    import_file(app)
    question = "aaa2b3c4-1111-4d5e-8f60-7a8b9c0d1e01"  # it already has two answers
    ask(client, "What is the capital of France?", convo_id=CAPITALS, parent_id=question)
    assert len(history(client, CAPITALS)["mapping"][question]["children"]) == 3


def test_service_made_conversations_export_as_chatgpt_does_and_import_back(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    first = ask(client, "One")
    ask(client, "Two", convo_id=first["conversation_id"])
    ask(client, "Two, again", convo_id=first["conversation_id"], parent_id=first["parent_id"])
    ask(client, "Other")
    before = {c["id"]: history(client, c["id"]) for c in ok(post(client, "conversation", {}))}
    exported = export_all(app)
    assert len(exported) == 2
    for conversation in exported:
        assert conversation["conversation_id"] == conversation["id"]
        assert {"title", "create_time", "update_time", "mapping", "moderation_results", "current_node"} <= set(conversation)
        [root] = [node for node in conversation["mapping"].values() if node["parent"] is None]
        assert root["message"] is None
    post(client, "clear/conversations", {})
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported), encoding="utf-8")
    assert import_file(app, path).conversations == 2
    assert {cid: history(client, cid) for cid in before} == before


def test_a_re_import_of_the_same_message_ids_elsewhere_gets_new_ids(app: Flask, tmp_path: Path) -> None:
    """A copy of a conversation under another id (a fork) shares its message ids."""
    original = by_id(json.loads(EXPORT.read_text(encoding="utf-8")))[CAPITALS]
    fork = {**original, "id": str(uuid.uuid4()), "conversation_id": None, "title": "Fork"}
    fork["conversation_id"] = fork["id"]
    path = tmp_path / "fork.json"
    path.write_text(json.dumps([original, fork]), encoding="utf-8")
    assert import_file(app, path).conversations == 2
    assert by_id(export_all(app))[fork["id"]]["mapping"] == original["mapping"]


def test_a_file_of_many_batches_stores_each_conversation_once_and_each_message_id_once(
    app: Flask, tmp_path: Path
) -> None:
    """Conversations are written a batch at a time: the same conversation again, in its batch
    or a later one, is present already; a message id used in an earlier batch, or earlier in
    the same one, gets a new id here and comes back in the export as the file gave it."""
    original = original_conversations()[CAPITALS]
    forks = [{**original, "id": str(uuid.UUID(int=n + 1)), "conversation_id": str(uuid.UUID(int=n + 1))}
             for n in range(2 * BATCH_CONVERSATIONS + 5)]
    entries = [original, *forks[:3], original, *forks[3:], forks[0], original]
    report = import_file(app, write_json(tmp_path / "forks.json", entries))
    assert (report.conversations, report.messages, report.already_present) == (len(forks) + 1, 7 * (len(forks) + 1), 3)
    assert count_rows(app) == (len(forks) + 1, 7 * (len(forks) + 1))
    exported = by_id(export_all(app))
    assert len(exported) == len(forks) + 1
    assert all(exported[fork["id"]]["mapping"] == original["mapping"] for fork in forks)
    assert exported[CAPITALS] == original


def test_what_is_not_a_conversation_is_counted_and_skipped(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"title": "no mapping", "id": str(uuid.uuid4())}, 5, {"mapping": {}}]))
    report = import_file(app, path)
    assert (report.conversations, report.invalid) == (0, 3)
    assert [(skipped.index, skipped.title) for skipped in report.skipped] == [(0, "no mapping"), (1, None), (2, None)]


def run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return launcher.run(list(args), {**os.environ, "DATABASE_URL": database_url}, timeout=300)


def test_the_commands_import_a_zip_and_export_a_file(database_url: str, tmp_path: Path) -> None:
    archive = tmp_path / "chatgpt-export.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(EXPORT, "conversations.json")
        zipped.writestr("chat.html", "<html></html>")
    imported = run_cli(database_url, "import", str(archive))
    assert imported.returncode == 0, imported.stderr
    assert "imported 3 conversation(s) with 24 message(s)" in imported.stderr
    assert "100%" in imported.stderr  # the progress bar, on stderr
    again = run_cli(database_url, "import", str(EXPORT))
    assert "3 already present" in again.stderr
    out = tmp_path / "conversations.json"
    exported = run_cli(database_url, "export", str(out))
    assert exported.returncode == 0, exported.stderr
    assert by_id(json.loads(out.read_text(encoding="utf-8"))) == by_id(json.loads(EXPORT.read_text(encoding="utf-8")))


def test_a_file_that_is_not_json_is_refused_cleanly(database_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "x", "mapping": {')
    result = run_cli(database_url, "import", str(broken))
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr and "Traceback" not in result.stderr


def write_large_export(path: Path, conversations: int, messages: int, text_size: int, first: int = 1) -> None:
    """A synthetic export, written as a stream (the test itself stays small)."""
    filler = ("数据导出 export " * (text_size // 16 + 1))[:text_size]
    with path.open("w", encoding="utf-8") as out:
        out.write("[")
        for n in range(conversations):
            cid = str(uuid.UUID(int=first + n))
            ids = [f"{cid[:-12]}{k:012d}" for k in range(messages + 1)]
            ids[0] = "client-created-root"
            mapping = {ids[0]: {"id": ids[0], "message": None, "parent": None, "children": [ids[1]]}}
            for k in range(1, messages + 1):
                role = "user" if k % 2 else "assistant"
                mapping[ids[k]] = {
                    "id": ids[k],
                    "message": {
                        "id": ids[k], "author": {"role": role, "name": None, "metadata": {}},
                        "create_time": 1.7e9 + n * 100 + k, "update_time": None,
                        "content": {"content_type": "text", "parts": [f"{k}: {filler}"]},
                        "status": "finished_successfully", "end_turn": role == "assistant", "weight": 1.0,
                        "metadata": {"model_slug": "gpt-4o"} if role == "assistant" else {}, "recipient": "all",
                    },
                    "parent": ids[k - 1],
                    "children": [ids[k + 1]] if k < messages else [],
                }
            conversation = {
                "title": f"Synthetic {n}", "create_time": 1.7e9 + n * 100, "update_time": 1.7e9 + n * 100 + messages,
                "mapping": mapping, "moderation_results": [], "current_node": ids[-1], "id": cid,
            }
            out.write(("," if n else "") + json.dumps(conversation, ensure_ascii=False))
        out.write("]")


PEAK_REPORTER = """
import runpy, sys
sys.argv = ["app.py", *sys.argv[1:]]
try:
    runpy.run_path("app.py", run_name="__main__")
finally:
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    sys.stderr.write("\\npeak-rss-kb " + peak.split()[1] + "\\n")
"""


def peak_rss_of_import(database_url: str, path: Path) -> int:
    """Peak resident memory (bytes) of `python app.py import PATH`, read from its own VmHWM
    (unlike ru_maxrss, it does not start from the parent's size at fork)."""
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-c", PEAK_REPORTER, "import", str(path)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stderr.rsplit("peak-rss-kb ", 1)[1].split()[0]) * 1024


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_a_large_export_imports_in_bounded_memory(database_url: str, tmp_path: Path) -> None:
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    write_large_export(small, conversations=2, messages=6, text_size=1000, first=10**6)
    write_large_export(large, conversations=800, messages=12, text_size=2400)
    size = large.stat().st_size
    assert size > 30 * 2**20
    baseline = peak_rss_of_import(database_url, small)
    peak = peak_rss_of_import(database_url, large)
    # Loading the file whole would take several times its size; streaming holds one conversation.
    print(f"import of {size / 2**20:.0f} MiB: peak RSS {peak / 2**20:.0f} MiB, {baseline / 2**20:.0f} MiB for a tiny file")
    assert peak - baseline < size / 2
    with_messages = CliRunner().invoke(cli, ["export", "-"], env={"DATABASE_URL": database_url})
    assert with_messages.exit_code == 0, with_messages.output
    assert with_messages.stdout.count('"current_node"') == 802


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_import_into_an_empty_database_finds_each_parent_by_its_index(database_url: str, tmp_path: Path) -> None:
    """Each message's foreign keys are checked as the import goes. Planned once while the
    tables were empty, those checks would scan the whole messages table for every message."""
    export = tmp_path / "export.json"
    write_large_export(export, conversations=80, messages=12, text_size=100)
    rows = 80 * 13  # with each conversation's empty root
    engine = create_engine(database_url)

    scans_before, inserted_before = messages_scans_and_inserts(engine)
    result = run_import(database_url, export)
    assert result.exit_code == 0, result.output
    # A connection reports its counts when it closes.
    scans = messages_scans_once_reported(engine, inserted_before + rows) - scans_before
    engine.dispose()
    # Scanning is the cheaper plan only while the table is a page or two: a bounded number.
    assert scans < rows / 4, f"{scans} sequential scans of messages for {rows} imported messages"


# -- real exports: missing current nodes, other shapes, broken files, huge conversations, odd ids


def original_conversations() -> dict[str, dict[str, Any]]:
    return by_id(json.loads(EXPORT.read_text(encoding="utf-8")))


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def run_import(database_url: str, path: Path) -> Any:
    """`python app.py import PATH`, in this process."""
    return CliRunner().invoke(cli, ["import", str(path)], env={"DATABASE_URL": database_url})


def test_without_a_current_node_a_conversation_continues_from_its_latest_deepest_leaf(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI, tmp_path: Path
) -> None:
    conversations = original_conversations()
    untimed = {key: value for key, value in conversations[GREAT_WALL].items() if key != "current_node"}
    untimed["mapping"] = {  # no times at all: the deepest leaf
        key: {**node, "message": node["message"] and {**node["message"], "create_time": None}}
        for key, node in untimed["mapping"].items()
    }
    branched = {key: value for key, value in conversations[CAPITALS].items() if key != "current_node"}
    import_file(app, write_json(tmp_path / "no-current.json", [untimed, branched]))

    assert history(client, GREAT_WALL)["current_node"] == conversations[GREAT_WALL]["current_node"]
    assert history(client, CAPITALS)["current_node"] == conversations[CAPITALS]["current_node"]  # the newest leaf
    ask(client, "八达岭在哪里？", convo_id=GREAT_WALL)
    assert [m["role"] for m in fake_upstream.requests[0].body["messages"]] == ["user", "assistant"] * 2 + ["user"]


def test_one_conversation_object_alone_or_zipped_is_imported(database_url: str, tmp_path: Path) -> None:
    conversations = original_conversations()
    alone = run_import(database_url, write_json(tmp_path / "one.json", conversations[CAPITALS]))
    assert alone.exit_code == 0, alone.output
    assert "imported 1 conversation(s) with 7 message(s)" in alone.stderr
    archive = tmp_path / "one.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("conversations.json", json.dumps(conversations[GREAT_WALL]))
    zipped_one = run_import(database_url, archive)
    assert zipped_one.exit_code == 0, zipped_one.output
    assert "imported 1 conversation(s) with 7 message(s)" in zipped_one.stderr


@pytest.mark.parametrize(
    ("content", "found"),
    [('"hello"', "a string"), ("42", "a number"), ("null", "null"), ('{"conversations": []}', "an object without")],
)
def test_json_that_is_no_export_is_refused_saying_what_was_expected(
    sqlite_url: str, tmp_path: Path, content: str, found: str
) -> None:
    path = tmp_path / "other.json"
    path.write_text(content, encoding="utf-8")
    result = run_import(sqlite_url, path)
    assert result.exit_code == 1
    assert "expected ChatGPT's conversations.json (a list of conversations) or one conversation object" in result.stderr
    assert f"found {found}" in result.stderr and "Traceback" not in result.output


def test_a_file_that_breaks_off_says_what_was_imported_and_importing_it_whole_completes_it(
    database_url: str, tmp_path: Path
) -> None:
    text = EXPORT.read_text(encoding="utf-8")
    cut = tmp_path / "cut.json"
    cut.write_text(text[: text.index('"Capital cities"') + 300], encoding="utf-8")  # inside the third
    broken = run_import(database_url, cut)
    assert broken.exit_code == 1
    assert "imported 2 conversation(s) with 17 message(s)" in broken.stderr
    assert "is not valid JSON from entry [2] on; the 2 conversation(s) before it are in the database" in broken.stderr
    assert "Import the complete file again to add the rest" in broken.stderr
    whole = run_import(database_url, EXPORT)
    assert whole.exit_code == 0, whole.output
    assert "imported 1 conversation(s) with 7 message(s); 2 already present" in whole.stderr


def test_entries_that_are_not_conversations_are_named(database_url: str, tmp_path: Path) -> None:
    entries = [
        original_conversations()[GREAT_WALL],
        5,
        {"title": "Notes", "id": str(uuid.uuid4())},
        {"title": "空的", "id": str(uuid.uuid4()), "mapping": {}},
        {"mapping": {"root": {"id": "root", "message": None, "parent": None, "children": []}}},
    ]
    result = run_import(database_url, write_json(tmp_path / "mixed.json", entries))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-5:] == [
        "skipped entry [1] (no title): not an object",
        'skipped entry [2] "Notes": no mapping with nodes',
        'skipped entry [3] "空的": no mapping with nodes',
        "skipped entry [4] (no title): no id",
        "imported 1 conversation(s) with 7 message(s); 0 already present, 4 not conversations",
    ]


def test_ids_the_file_gave_come_back_as_it_gave_them(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    conversations = original_conversations()
    not_a_uuid = {key: value for key, value in conversations[GREAT_WALL].items() if key != "conversation_id"}
    not_a_uuid["id"] = "great-wall-from-another-exporter"
    disagreeing = {**conversations[TOOLS], "id": "tools-id", "conversation_id": "tools-conversation-id"}
    orphans = {**conversations[CAPITALS]}
    orphans["mapping"] = {key: node for key, node in orphans["mapping"].items() if key != "client-created-root"}
    sent = [not_a_uuid, disagreeing, orphans]
    import_file(app, write_json(tmp_path / "ids.json", sent))

    exported = export_all(app)
    first = by_id(exported)["great-wall-from-another-exporter"]
    assert first["conversation_id"] == "great-wall-from-another-exporter"  # absent in the file: the same as `id`
    assert {key: value for key, value in first.items() if key != "conversation_id"} == not_a_uuid
    assert by_id(exported)["tools-id"] == disagreeing
    assert by_id(exported)[CAPITALS] == orphans
    assert by_id(exported)[CAPITALS]["mapping"]["aaa1c0de-0001-4c3e-9b11-0e5d1c2b3a01"]["parent"] == "client-created-root"

    post(client, "clear/conversations", {})  # and once more round: the same file
    import_file(app, write_json(tmp_path / "again.json", exported))
    assert export_all(app) == exported


BIG_CONVERSATION_NODES = 2000

MEMORY_PROBE = """
import ctypes, gc, os, sys
from models.db import Database
from services.transfer import BATCH_CONVERSATIONS, ConversationTransfer, read_export

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

def peak_growth(step):
    '''Bytes the peak resident size grew by during `step` (freed memory given back first).'''
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak starts again from here
    before = kib("VmRSS")
    step()
    return (kib("VmHWM") - before) * 1024

def import_file(path):
    with open(path, "rb") as stream:
        transfer.import_conversations(read_export(stream))

def export():
    with open(os.devnull, "w", encoding="utf-8") as out:
        transfer.export_conversations(out)

database = Database(sys.argv[1])
database.migrate()
transfer = ConversationTransfer(database)
import_file(sys.argv[2])  # warm up: statements compiled, modules loaded
export()
print(peak_growth(lambda: import_file(sys.argv[3])), peak_growth(export))
"""


def write_big_conversation(path: Path, nodes: int, with_small: int) -> int:
    """One conversation of `nodes` nodes shaped like ChatGPT's (its size in bytes returned),
    then `with_small` conversations of 20 nodes."""
    filler = ("数据导出 export " * 60)[:900]
    with path.open("w", encoding="utf-8") as out:
        out.write("[")
        for n, count in enumerate([nodes] + [20] * with_small):
            start = out.tell()
            keys = ["client-created-root"] + [str(uuid.UUID(int=(n << 32) + k)) for k in range(1, count)]
            out.write(('{"title": "Long", "create_time": 1.7e9, "update_time": 1.7e9, "mapping": {'))
            for k, key in enumerate(keys):
                role = "user" if k % 2 else "assistant"
                message = {
                    "id": key, "author": {"role": role, "name": None, "metadata": {}},
                    "create_time": 1.7e9 + k, "update_time": None,
                    "content": {"content_type": "text", "parts": [f"{k}: {filler}"]},
                    "status": "finished_successfully", "end_turn": role == "assistant", "weight": 1.0,
                    "metadata": {"citations": [], "model_slug": "gpt-4o", "parent_id": keys[k - 1],
                                 "request_id": "8a1b2c3d4e5f6a7b-AMS", "timestamp_": "absolute"},
                    "recipient": "all", "channel": None,
                } if k else None
                node = {"id": key, "message": message, "parent": keys[k - 1] if k else None,
                        "children": [keys[k + 1]] if k + 1 < count else []}
                out.write(("" if k == 0 else ", ") + json.dumps(key) + ": " + json.dumps(node, ensure_ascii=False))
            out.write(f'}}, "current_node": "{keys[-1]}", "id": "{uuid.UUID(int=n + 1)}"}}')
            out.write("," if n < with_small else "]")
            size = out.tell() - start if n == 0 else size
    return size


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_a_huge_conversation_imports_and_exports_in_about_its_own_size(database_url: str, tmp_path: Path) -> None:
    """Memory grows with the largest conversation (here 2,000 nodes), never with the whole file."""
    big = tmp_path / "big.json"
    size = write_big_conversation(big, BIG_CONVERSATION_NODES, with_small=50)
    warm_up = write_json(tmp_path / "warm.json", [original_conversations()[CAPITALS]])
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, database_url, str(warm_up), str(big)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    imported, exported = map(int, probe.stdout.split())
    print(f"{size / 2**20:.1f} MiB conversation: import +{imported / size:.1f}x, export +{exported / size:.1f}x")
    assert imported < 3 * size and exported < 3 * size


def v1(client: FlaskClient, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
    """A 200 answer of `/v1<path>`, as the caller of `key` (None: the anonymous caller)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = client.open(f"/v1{path}", method=method, json=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def everything_v1_shows(client: FlaskClient, key: str | None = None) -> dict[str, Any]:
    """Every object `/v1` and `msg/history` give of the caller's conversations."""
    seen: dict[str, Any] = {}
    for conversation in v1(client, "GET", "/conversations?limit=100", key=key)["data"]:
        cid = conversation["id"]
        seen[cid] = conversation
        seen[f"{cid}/items"] = v1(client, "GET", f"/conversations/{cid}/items?limit=100&order=asc", key=key)
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}" if key else ""
        tree = history(client, cid.removeprefix("conv_"))
        seen[f"{cid}/history"] = tree
        for node in tree["mapping"].values():
            if (node.get("message") or {}).get("author", {}).get("role") == "assistant":
                rid = "resp_" + node["id"].replace("-", "")
                seen[rid] = v1(client, "GET", f"/responses/{rid}", key=key)
                seen[f"{rid}/input_items"] = v1(client, "GET", f"/responses/{rid}/input_items?limit=100", key=key)
    completions = v1(client, "GET", "/chat/completions?limit=100", key=key)
    seen["chat_completions"] = completions
    for completion in completions["data"]:
        seen[f"{completion['id']}/messages"] = v1(client, "GET", f"/chat/completions/{completion['id']}/messages", key=key)
    return seen


def test_what_v1_kept_survives_an_export_and_an_import_under_another_owner(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI, tmp_path: Path
) -> None:
    conversation = v1(client, "POST", "/conversations", {
        "metadata": {"topic": "capitals"}, "items": [{"role": "user", "content": "Let us talk about capitals."}],
    })
    first = v1(client, "POST", "/responses", {
        "conversation": conversation["id"], "input": "Capital of France?", "instructions": "Be brief.",
        "metadata": {"run": "1"}, "temperature": 0.5, "top_p": 0.9, "max_output_tokens": 50, "user": "u-1",
    })
    fake_upstream.script(Reply(text="Rome, and then I stopped", finish_reason="length", usage=(11, 3)))
    second = v1(client, "POST", "/responses", {
        "previous_response_id": first["id"],
        "input": [{"role": "developer", "content": "Answer in one word."}, {"role": "user", "content": "Italy?"}],
    })
    v1(client, "POST", "/responses", {"previous_response_id": first["id"], "input": "Spain?"})  # a branch
    chat = v1(client, "POST", "/chat/completions", {
        "messages": [{"role": "user", "content": "Hi"}], "metadata": {"app": "test"},
    })
    said = [{"role": "user", "content": "Hi"}, chat["choices"][0]["message"], {"role": "user", "content": "More"}]
    v1(client, "POST", "/chat/completions", {"messages": said})
    v1(client, "POST", f"/conversations/{conversation['id']}", {"metadata": {"topic": "capitals", "v": "2"}})
    before = everything_v1_shows(client)
    assert before[second["id"]]["status"] == "incomplete" and before[second["id"]]["usage"]["input_tokens"] == 11
    assert before[first["id"]]["instructions"] == "Be brief." and before[first["id"]]["temperature"] == 0.5
    assert [item["role"] for item in before[f"{second['id']}/input_items"]["data"]] == ["user", "developer"]
    assert len(before["chat_completions"]["data"]) == 2

    exported = export_all(app)
    assert {c["gpt_api"]["metadata"].get("topic") for c in exported if "metadata" in c.get("gpt_api", {})} == {"capitals"}
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported), encoding="utf-8")
    post(client, "clear/conversations", {})
    assert count_rows(app) == (0, 0)
    key = ApiKeys(app.services.database).create("bob").key
    assert import_file(app, path, owner="bob").conversations == 2

    after = everything_v1_shows(client, key)
    assert after == before
    # Bob's chat threads into the imported exchange: its path hashes are his.
    continued = [*said, v1(client, "GET", f"/chat/completions/{before['chat_completions']['data'][1]['id']}", key=key)
                 ["choices"][0]["message"], {"role": "user", "content": "Again"}]
    v1(client, "POST", "/chat/completions", {"messages": continued}, key=key)
    assert len(v1(client, "GET", "/conversations", key=key)["data"]) == 2
    assert v1(client, "POST", "/responses", {"previous_response_id": second["id"], "input": "Why?"}, key=key)


def test_what_of_gpt_api_an_import_cannot_use_is_left_out_not_the_conversation(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    answer = "0b6f5e4d-2222-4c3b-9a18-1e2f3a4b5c01"
    capitals = by_id(json.loads(EXPORT.read_text(encoding="utf-8")))[CAPITALS]
    capitals["gpt_api"] = {
        "metadata": {"k": 5},  # not a string
        "responses": {answer: {"input_ids": ["no-such-node"]}, "aaa2b3c4-1111-4d5e-8f60-7a8b9c0d1e01": "x"},
        "chat_completions": [{"id": {}}, {"id": answer, "model": "m", "response": {"choices": [{"message_id": "nope"}]}}],
        "chat_path": 3,
    }
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([capitals]), encoding="utf-8")
    assert import_file(app, path).conversations == 1
    conversation = v1(client, "GET", f"/conversations/conv_{CAPITALS.replace('-', '')}")
    assert conversation["metadata"] == {}
    response = v1(client, "GET", f"/responses/resp_{answer.replace('-', '')}")
    assert response["instructions"] is None and response["output"][0]["content"][0]["text"]
    assert v1(client, "GET", "/chat/completions")["data"] == []
    assert "gpt_api" not in export_all(app)[0]  # nothing of it was kept

"""The chat page in a real Chromium, against the real server process and the fake upstream.

One browser for the module, and one server per database: the journeys that store
something run against a server on SQLite and one on PostgreSQL; the purely visual ones
(`ONCE`) on SQLite only. Each test starts from an empty store and an empty browser
storage. The server reaches the fake upstream through a proxy a test can cut (an
upstream that goes down). One test starts a locked-down server of its own: API keys,
no upstream, a low rate limit.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import Engine

from fakes.openai_upstream import MODELS, Fail, FakeOpenAI, Reply
from fakes.tcp_proxy import TcpProxy
from models.db import Database
from services.api_keys import ApiKeys
from tests.browser import chromium, page_problems, reset_viewport, set_color_scheme, set_viewport
from tests.conftest import UPSTREAM_KEY, emptied
from tests.server_process import HTTP, ServerProcess

pytestmark = pytest.mark.e2e

FIRST_LOAD_BUDGET = 150 * 1024
XSS_ANSWER = (
    "<script>window.__xss = 'script'</script>\n\n"
    '<img src="x" onerror="window.__xss = \'onerror\'">\n\n'
    "[a link](javascript:window.__xss='href')\n\n"
    '<a href="#" onclick="window.__xss=\'onclick\'">click</a>\n\n'
    '```python\nprint("<b>bold?</b>")\n```'
)
NO_UPSTREAM = (
    "No upstream is configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for a server other than "
    "OpenAI's), or LLM_PROVIDER=chatgpt with CHATGPT_ACCESS_TOKEN. Then restart the server."
)


ONCE = pytest.mark.parametrize("server", ["sqlite"], indirect=True)
"""For a test of how the page looks or behaves in itself: one database is enough."""


@pytest.fixture(scope="module")
def upstream_proxy(fake_upstream_server: FakeOpenAI) -> Iterator[TcpProxy]:
    """The fake upstream behind a proxy: `cut()` is an upstream that went down."""
    address = urlsplit(fake_upstream_server.url)
    assert address.hostname and address.port
    with TcpProxy(address.hostname, address.port) as proxy:
        yield proxy


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, cleaners: dict[str, Engine], upstream_proxy: TcpProxy
) -> Iterator[ServerProcess]:
    """`python app.py` on the run's database of each kind (migrated once, emptied here)."""
    database_url = emptied(request.getfixturevalue(f"{request.param}_url"), cleaners)
    env = {
        "DATABASE_URL": database_url,
        "MIGRATE_ON_START": "false",
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_proxy.port}/v1",
        "OPENAI_MODEL": "gpt-test",
        "UPSTREAM_MAX_RETRIES": "0",
        "GENERATE_TITLES": "false",
        "LOG_LEVEL": "WARNING",  # no line per file the page loads
    }
    running = ServerProcess(env).start()
    yield running
    running.stop(signal.SIGINT)  # at once: the browser's idle connections would hold a graceful stop
    assert "Traceback" not in running.output


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    browser = chromium()
    yield browser
    browser.quit()


class Page:
    """The chat page as a person uses it: type, click, read."""

    def __init__(self, driver: webdriver.Chrome, url: str) -> None:
        self.driver = driver
        self.url = url

    def open(self, path: str = "/") -> Page:
        self.driver.get(self.url + path)
        self.wait_for(lambda: self.driver.execute_script("return document.body.dataset.ready === 'true'"))
        return self

    def reload(self) -> Page:
        """Load the page again at the same address (the open conversation is in it)."""
        self.driver.refresh()
        self.wait_for(lambda: self.driver.execute_script("return document.body.dataset.ready === 'true'"))
        return self

    def wait_for(self, condition: Callable[[], Any], timeout: float = 8.0) -> Any:
        def attempt(_driver: object) -> Any:
            try:
                return condition()
            except StaleElementReferenceException:
                return False

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(attempt)

    def find(self, css: str, within: WebElement | None = None) -> WebElement:
        return (within or self.driver).find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def type_prompt(self, text: str) -> None:
        self.find("#prompt").send_keys(text + "\n")

    def messages(self) -> list[tuple[str, str]]:
        """The thread as (role, text of its body), top to bottom."""
        return [
            ("user" if "user" in a.get_attribute("class") else "assistant", self.find(".body", a).text)
            for a in self.all("#thread article.message")
        ]

    def wait_stored(self, answer: str) -> list[tuple[str, str]]:
        """Wait until the stored conversation is shown, its last answer being `answer`."""

        def shown() -> bool:
            articles = self.all("#thread article.message")
            return (
                bool(articles)
                and all(a.get_attribute("data-id") for a in articles)
                and (self.messages()[-1] == ("assistant", answer))
            )

        self.wait_for(shown)
        return self.messages()

    def find_message(self, text: str) -> WebElement | None:
        """The stored message whose body reads `text`, if one is shown."""
        for article in self.all("#thread article.message[data-id]"):
            if self.find(".body", article).text == text:
                return article
        return None

    def message(self, text: str) -> WebElement:
        """The stored message whose body reads `text`."""
        found = self.find_message(text)
        assert found is not None, f"no message {text!r} in {self.messages()}"
        return found

    def sidebar(self) -> list[str]:
        return [b.text for b in self.all("#conversations .convo-open")]

    def notice(self, starting: str = "") -> str:
        """The notice shown (once it starts with `starting`)."""
        return self.wait_for(
            lambda: self.find("#notice").is_displayed()
            and (text := self.find("#notice").text).startswith(starting)
            and text
        )

    def note(self, article: WebElement) -> str:
        """What is said under a message about how it ended ("interrupted"), or ""."""
        notes = article.find_elements(By.CSS_SELECTOR, ".note")
        return notes[0].text if notes else ""


@pytest.fixture
def page(server: ServerProcess, driver: webdriver.Chrome, fake_upstream: FakeOpenAI) -> Iterator[Page]:
    """The page on an empty store, with nothing in the browser's storage."""
    assert server.post("clear/conversations", {}).status_code == 200
    page = Page(driver, server.url)
    driver.get(server.url + "/web/index.html")
    driver.execute_script("localStorage.clear()")
    driver.get_log("browser")  # drop what earlier tests left
    page.open()
    yield page
    reset_viewport(driver)
    assert page_problems(driver) == []
    assert driver.execute_script("return window.__xss") is None


def ask_api(server: ServerProcess, prompt: str, **fields: Any) -> dict[str, Any]:
    response = server.post("ask", {"prompt": prompt, **fields})
    assert response.status_code == 200, response.text
    return response.json()["response"]


def test_an_answer_streams_in_and_is_all_there_after_a_reload(page: Page, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(
        Reply(text="First second third.", chunks=["First ", "second ", "third."], chunk_delay=0.3)
    )
    page.type_prompt("Hello there")
    page.wait_for(lambda: page.find("#stop").is_displayed())
    partial = page.wait_for(lambda: (text := page.messages()[-1][1]) and text.startswith("First") and text)
    assert "third" not in partial  # seen while it was being written
    assert page.wait_stored("First second third.") == [
        ("user", "Hello there"),
        ("assistant", "First second third."),
    ]
    assert not page.find("#stop").is_displayed()
    answer = page.message("First second third.")
    assert answer.get_attribute("title") == "gpt-test · 7 prompt + 5 completion = 12 tokens"
    assert page.sidebar() == ["New chat"]

    page.reload()  # the address keeps the open conversation
    assert page.wait_stored("First second third.") == [
        ("user", "Hello there"),
        ("assistant", "First second third."),
    ]

    page.open("/")  # a fresh start: the conversation is in the sidebar
    assert page.messages() == []
    page.find("#conversations .convo-open").click()
    page.wait_stored("First second third.")


def test_continuing_regenerating_and_editing_make_branches_reachable_by_the_switch(
    page: Page, server: ServerProcess, fake_upstream: FakeOpenAI
) -> None:
    page.type_prompt("Question one")
    page.wait_stored("Echo: Question one")
    page.type_prompt("Question two")
    page.wait_stored("Echo: Question two")

    fake_upstream.script(Reply(text="Another answer"))
    page.find("button.regenerate", page.message("Echo: Question two")).click()
    assert page.wait_stored("Another answer")[-2:] == [
        ("user", "Question two"),
        ("assistant", "Another answer"),
    ]
    assert page.find(".siblings .count", page.message("Question two")).text == "2/2"

    page.find("button.edit", page.message("Question one")).click()
    editor = page.find("#thread textarea.editor")
    editor.clear()
    editor.send_keys("Question one, edited\n")
    assert page.wait_stored("Echo: Question one, edited") == [
        ("user", "Question one, edited"),
        ("assistant", "Echo: Question one, edited"),
    ]
    assert page.find(".siblings .count", page.message("Question one, edited")).text == "2/2"

    page.find(".siblings .prev", page.message("Question one, edited")).click()
    assert page.wait_stored("Another answer") == [
        ("user", "Question one"),
        ("assistant", "Echo: Question one"),
        ("user", "Question two"),
        ("assistant", "Another answer"),
    ]
    page.find(".siblings .prev", page.message("Question two")).click()
    page.wait_stored("Echo: Question two")
    assert page.find(".siblings .count", page.message("Question two")).text == "1/2"

    # Continuing from the branch on screen asks under its last answer.
    page.type_prompt("Question three")
    assert page.wait_stored("Echo: Question three")[-4:] == [
        ("user", "Question two"),
        ("assistant", "Echo: Question two"),
        ("user", "Question three"),
        ("assistant", "Echo: Question three"),
    ]
    sent = fake_upstream.requests[-1].body["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == [
        "Question one",
        "Question two",
        "Question three",
    ]

    page.reload()
    assert page.wait_stored("Echo: Question three")[-1] == ("assistant", "Echo: Question three")
    assert page.find(".siblings .count", page.message("Question one")).text == "1/2"


def test_rename_delete_and_clear_from_the_sidebar_which_scrolls_on(page: Page, server: ServerProcess) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: ask_api(server, f"conversation {n}"), range(31)))
    made = [c["id"] for c in server.post("conversation", {"limit": 100}).json()["response"]]
    page.open()
    assert len(page.sidebar()) == 30  # one page; the rest when scrolled to
    page.driver.execute_script(
        "const s = document.getElementById('sidebar-scroll'); s.scrollTop = s.scrollHeight"
    )
    page.wait_for(lambda: len(page.sidebar()) == 31)
    items = page.all("#conversations .convo")
    assert [item.get_attribute("data-id") for item in items] == made

    newest = items[0]
    ActionChains(page.driver).move_to_element(newest).perform()  # its buttons show on hover
    newest.find_element(By.CSS_SELECTOR, "button[title=Rename]").click()
    title_box = page.find("#conversations input.rename")  # the old title, selected: typing replaces it
    title_box.send_keys("<img src=x onerror=\"window.__xss='title'\"> Renamed\n")
    page.wait_for(lambda: page.sidebar()[0] == "<img src=x onerror=\"window.__xss='title'\"> Renamed")
    listed = server.post("conversation", {"limit": 1}).json()["response"]
    assert listed[0]["title"] == "<img src=x onerror=\"window.__xss='title'\"> Renamed"

    second = page.all("#conversations .convo")[1]
    ActionChains(page.driver).move_to_element(second).perform()
    second.find_element(By.CSS_SELECTOR, "button[title=Delete]").click()
    page.driver.switch_to.alert.accept()
    page.wait_for(lambda: len(page.sidebar()) == 30)
    remaining = {c["id"] for c in server.post("conversation", {"limit": 100}).json()["response"]}
    assert made[1] not in remaining and len(remaining) == 30

    page.find("#clear").click()
    page.driver.switch_to.alert.dismiss()  # "no" leaves everything
    assert len(page.sidebar()) == 30
    page.find("#clear").click()
    page.driver.switch_to.alert.accept()
    page.wait_for(lambda: page.sidebar() == [])
    assert server.post("conversation", {}).json()["response"] == []


@ONCE
def test_answers_carrying_html_or_scripts_run_nothing(page: Page, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text=XSS_ANSWER))
    page.type_prompt("<img src=x onerror=\"window.__xss='prompt'\"> hi")
    page.wait_for(lambda: page.all("#thread article.assistant[data-id] .hljs"))
    assert page.messages()[0] == ("user", "<img src=x onerror=\"window.__xss='prompt'\"> hi")
    thread = page.find("#thread")
    assert thread.find_elements(By.CSS_SELECTOR, "script, [onerror], [onclick]") == []
    hrefs = [a.get_attribute("href") or "" for a in thread.find_elements(By.CSS_SELECTOR, "a")]
    assert not any(href.startswith("javascript:") for href in hrefs)
    assert thread.find_elements(By.CSS_SELECTOR, "img")  # the image stays, harmless
    code = page.find("#thread pre code.hljs")
    assert code.text == 'print("<b>bold?</b>")' and code.find_elements(By.CSS_SELECTOR, "span")
    assert page.driver.execute_script("return window.__xss") is None
    # Chromium reports the handlers DOMPurify's inert parse met (blocked by the page's
    # policy besides); nothing else may have gone wrong.
    reports = page_problems(page.driver)
    assert reports and all(
        "purify.min.js" in r and "inline event handler" in r and "blocked" in r for r in reports
    )


@ONCE
def test_enter_sends_and_shift_enter_starts_a_new_line(page: Page, fake_upstream: FakeOpenAI) -> None:
    prompt = page.find("#prompt")
    one_line = prompt.size["height"]
    prompt.send_keys("First line")
    ActionChains(page.driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    prompt.send_keys("second line")
    assert prompt.get_attribute("value") == "First line\nsecond line"
    assert prompt.size["height"] > one_line  # the box grows with its text
    assert page.messages() == [] and fake_upstream.requests == []  # nothing sent yet
    prompt.send_keys(Keys.ENTER)
    assert page.wait_stored("Echo: First line\nsecond line") == [
        ("user", "First line\nsecond line"),
        ("assistant", "Echo: First line\nsecond line"),
    ]
    assert prompt.get_attribute("value") == "" and prompt.size["height"] == one_line


def test_stop_keeps_the_partial_answer_stored_and_marked(
    page: Page, server: ServerProcess, fake_upstream: FakeOpenAI
) -> None:
    # Long enough that the answer is still coming when the server notices the stop, however
    # late the click lands on a busy machine.
    fake_upstream.script(Reply(chunks=["Partial ", "words ", *["never "] * 20, "seen"], chunk_delay=0.4))
    page.type_prompt("Tell me slowly")
    page.wait_for(lambda: page.messages()[-1][1].startswith("Partial"))
    page.find("#stop").click()
    page.wait_for(lambda: page.find("#send").is_displayed())
    answer = page.wait_for(lambda: page.all("#thread article.assistant[data-id] .note"))[0]
    assert answer.text == "interrupted"  # as stored: whatever the server had when it noticed
    [stored] = stored_answers(server)
    assert stored["status"] == "finished_partial_completion"
    assert stored["metadata"]["finish_details"] == {"type": "interrupted"}
    assert stored["content"]["parts"][0].startswith("Partial")
    assert page.messages()[-1] == ("assistant", stored["content"]["parts"][0].strip())


def test_upstream_failures_are_shown_and_the_question_can_be_retried(
    page: Page, fake_upstream: FakeOpenAI, upstream_proxy: TcpProxy
) -> None:
    fake_upstream.script(Fail(status=500, message="upstream exploded"))
    page.type_prompt("Will this work?")
    failed = page.notice()
    assert failed.startswith("The upstream model failed: The upstream answered 500") and "exploded" in failed
    page.wait_for(lambda: page.all("#thread article.user[data-id] button.retry"))
    assert page.messages() == [("user", "Will this work?")]
    page.find("#thread button.retry").click()
    assert page.wait_stored("Echo: Will this work?") == [
        ("user", "Will this work?"),
        ("assistant", "Echo: Will this work?"),
    ]
    assert page.find(".siblings .count", page.message("Will this work?")).text == "2/2"

    fake_upstream.script(Reply(chunks=["Half ", "an ", "answer"], break_after=1))
    page.type_prompt("Break off")
    page.wait_for(lambda: page.messages()[-2:] == [("user", "Break off"), ("assistant", "Half")])
    assert page.notice().startswith("The upstream model failed:")
    answer = page.wait_for(lambda: page.all("#thread article.assistant[data-id] .note"))[0]
    assert answer.text == "interrupted"  # what was written stays, marked

    upstream_proxy.cut()  # the upstream goes down: its connections reset, new ones refused
    try:
        page.type_prompt("Anyone there?")
        assert page.notice("The upstream model failed: Could not") == (
            "The upstream model failed: Could not reach the upstream (connection failed or was cut)."
        )
        question = page.wait_for(lambda: page.find_message("Anyone there?"))
        assert page.messages()[-1] == ("user", "Anyone there?")  # kept, with no answer
    finally:
        upstream_proxy.restore()
    page.find("button.retry", question).click()
    assert page.wait_stored("Echo: Anyone there?")[-2:] == [
        ("user", "Anyone there?"),
        ("assistant", "Echo: Anyone there?"),
    ]
    assert not page.find("#notice").is_displayed()


def test_a_connection_lost_mid_answer_keeps_what_was_written_marked_interrupted(
    page: Page, server: ServerProcess, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(
        Reply(chunks=["Written ", "before ", "the ", "cut ", "and ", "never ", "seen"], chunk_delay=0.5)
    )
    with TcpProxy("127.0.0.1", server.port) as proxy:  # the browser's way to the server
        far = Page(page.driver, f"http://127.0.0.1:{proxy.port}").open()
        far.type_prompt("Tell me slowly")
        far.wait_for(lambda: far.messages()[-1][1].startswith("Written"))
        proxy.cut()  # the connection dies mid-answer; the server cannot be reached any more
        assert far.notice() == (
            "The connection to the server was lost while the answer was being written. "
            "What arrived is kept, marked interrupted."
        )
        [question, answer] = far.all("#thread article.message")
        written = far.find(".body", answer).text
        assert written.startswith("Written") and "seen" not in written
        assert far.note(answer) == "interrupted"
        assert far.find(".body", question).text == "Tell me slowly"

        [stored] = far.wait_for(
            lambda: (found := stored_answers(server)) and found[0]["status"] != "in_progress" and found
        )
        assert stored["metadata"]["finish_details"] == {"type": "interrupted"}
        kept = stored["content"]["parts"][0]
        assert kept.startswith(written) and "seen" not in kept  # the server stopped too

        proxy.restore()  # back online: the conversation is there, as the server kept it
        far.open()
        far.find("#conversations .convo-open").click()
        far.wait_stored(kept.strip())
        assert far.note(far.message(kept.strip())) == "interrupted"


@ONCE
def test_a_question_the_server_refuses_goes_back_into_the_box(page: Page, server: ServerProcess) -> None:
    page.type_prompt("First")
    page.wait_stored("Echo: First")
    [conversation] = server.post("conversation", {}).json()["response"]
    server.post("delete/conversation", {"convo_id": conversation["id"]})  # say, from another tab
    page.type_prompt("Second")
    assert page.notice() == f"Conversation {conversation['id']} does not exist."
    page.wait_for(lambda: page.find("#prompt").get_attribute("value") == "Second")
    assert page.messages() == [("user", "First"), ("assistant", "Echo: First")]  # nothing half-asked


def test_search_finds_a_question_and_opens_its_conversation_there(page: Page, server: ServerProcess) -> None:
    ask_api(server, "where is the walrus")
    ask_api(server, "nothing to see")
    page.open()
    page.find("#search").send_keys("walrus")
    hits = page.wait_for(lambda: page.all("#search-results button.hit"))
    assert len(hits) == 2 and all("walrus" in hit.text for hit in hits)  # the question and its answer
    hits[0].click()
    assert page.wait_stored("Echo: where is the walrus")[0] == ("user", "where is the walrus")
    assert page.all("#thread article.flash")  # the message found is shown
    page.find("#search").clear()
    page.find("#search").send_keys("nothing matches this")
    page.wait_for(lambda: page.find("#list-end").text == "Nothing found.")


def test_the_model_picker_offers_the_upstreams_models_and_asks_with_the_one_chosen(
    page: Page, fake_upstream: FakeOpenAI
) -> None:
    picker = Select(page.find("#model"))
    assert picker.first_selected_option.text == "Default model"
    assert [option.text for option in picker.options] == ["Default model", *sorted(MODELS)]
    picker.select_by_visible_text("org/model-with-a-slash")
    page.type_prompt("Which model?")
    page.wait_stored("Echo: Which model?")
    assert asked(fake_upstream)[-1]["model"] == "org/model-with-a-slash"
    assert page.message("Echo: Which model?").get_attribute("title").startswith("org/model-with-a-slash · ")

    page.reload()  # the choice is kept in this browser
    picker = Select(page.find("#model"))
    assert picker.first_selected_option.text == "org/model-with-a-slash"
    picker.select_by_visible_text("Default model")
    page.type_prompt("And now?")
    page.wait_stored("Echo: And now?")
    assert asked(fake_upstream)[-1]["model"] == "gpt-test"  # the server's OPENAI_MODEL
    assert page.message("Echo: And now?").get_attribute("title").startswith("gpt-test · ")


def test_a_locked_server_without_upstream_asks_for_a_key_names_the_variable_and_limits_the_rate(
    driver: webdriver.Chrome, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    database = Database(url)
    database.migrate()
    key = ApiKeys(database).create("browser").key
    database.dispose()
    env = {
        "DATABASE_URL": url,
        "MIGRATE_ON_START": "false",
        "GENERATE_TITLES": "false",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT": "40/minute",
    }
    server = ServerProcess(env).start()  # no upstream
    try:
        page = Page(driver, server.url)
        driver.get(server.url + "/")
        reason = page.wait_for(
            lambda: page.find("#key-dialog").is_displayed() and page.find("#key-reason").text
        )
        assert "needs a key" in reason
        page.find("#key-input").send_keys("gpa_not-a-key\n")
        page.wait_for(lambda: page.find("#key-reason").text.startswith("That key was refused"))
        page.find("#key-input").send_keys(key + "\n")
        page.wait_for(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"))
        assert page.find("#list-end").text == "No conversations yet."
        assert driver.execute_script("return localStorage.getItem('gpt-api.key')") == key

        # No upstream: the page says what to set before anyone asks, and again on asking.
        assert page.notice() == NO_UPSTREAM
        page.type_prompt("Hello?")
        page.wait_for(lambda: page.find("#prompt").get_attribute("value") == "Hello?")  # given back
        assert page.notice() == NO_UPSTREAM and page.messages() == []

        page.reload()  # the key is remembered
        assert not page.find("#key-dialog").is_displayed()
        page.find("#prompt").clear()

        # Rate limited: another client with the same key used up what the key may ask.
        for _ in range(50):
            spent = HTTP.post(
                f"{server.url}/api/chat/conversation", json={}, headers={"Authorization": f"Bearer {key}"}
            )
            if spent.status_code == 429:
                break
        assert spent.status_code == 429
        page.type_prompt("Too fast?")
        notice = page.notice("Rate limited:")
        assert re.fullmatch(
            r"Rate limited: Too many requests: each caller may make 40 per 1 minute; retry in \d+ s\.", notice
        )
        page.wait_for(lambda: page.find("#prompt").get_attribute("value") == "Too fast?")
        assert page.messages() == []
        assert page_problems(driver) == []
    finally:
        server.stop(signal.SIGINT)


def asked(fake_upstream: FakeOpenAI) -> list[dict[str, Any]]:
    """The bodies of the chat completions the upstream was asked for, in order."""
    return [r.body for r in fake_upstream.requests if r.path.endswith("/chat/completions")]


def stored_answers(server: ServerProcess) -> list[dict[str, Any]]:
    """The assistant messages of the one conversation in the store, as `msg/history` gives them."""
    [conversation] = server.post("conversation", {}).json()["response"]
    tree = server.post("msg/history", {"convo_id": conversation["id"]}).json()["response"]
    return [
        node["message"]
        for node in tree["mapping"].values()
        if node.get("message", {}).get("author", {}).get("role") == "assistant"
    ]


@ONCE
def test_screenshots_and_first_load_size(
    page: Page, server: ServerProcess, fake_upstream: FakeOpenAI, tmp_path: Path
) -> None:
    driver = page.driver
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    try:
        page.open()
        loaded = driver.execute_script(
            """
            const [nav] = performance.getEntriesByType("navigation");
            const files = performance.getEntriesByType("resource").filter((e) => e.initiatorType !== "fetch");
            return {bytes: nav.transferSize + files.reduce((sum, e) => sum + e.transferSize, 0),
                    files: files.length + 1, ready: performance.getEntriesByName("ready")[0].startTime};
            """
        )
    finally:
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
    print(
        f"first load: {loaded['bytes'] / 1024:.1f} KB in {loaded['files']} files, usable after {loaded['ready']:.0f} ms"
    )
    assert 0 < loaded["bytes"] < FIRST_LOAD_BUDGET

    for title in ("Trip to Lisbon", "SQL window functions", "Regex for dates"):
        made = ask_api(server, title)
        server.post("change/title", {"convo_id": made["conversation_id"], "title": title})
    fake_upstream.script(
        Reply(
            text="A Python generator yields values **lazily**:\n\n```python\ndef count(n):\n"
            "    for i in range(n):\n        yield i\n```\n\nEach `next()` resumes it."
        )
    )
    page.type_prompt("What is a generator?")
    page.wait_for(lambda: page.all("#thread article.assistant[data-id] pre code.hljs"))
    fake_upstream.script(
        Reply(
            text="A generator is a function that `yield`s: it pauses there and resumes on the next `next()`.\n\n"
            "```python\ngen = (i * i for i in range(3))\nprint(list(gen))  # [0, 1, 4]\n```"
        )
    )
    page.find("#thread button.regenerate").click()
    page.wait_for(lambda: page.find("#thread .siblings .count").text == "2/2")
    page.wait_for(lambda: page.all("#thread article.assistant[data-id] pre code.hljs"))
    page.find("#conversations .convo.active button[title=Rename]").click()
    page.find("#conversations input.rename").send_keys("Python generators\n")
    page.wait_for(lambda: page.find("#title").text == "Python generators")
    driver.save_screenshot(str(tmp_path / "light.png"))
    set_color_scheme(driver, "dark")
    driver.save_screenshot(str(tmp_path / "dark.png"))
    set_color_scheme(driver, "light")
    set_viewport(driver, 390, 844, mobile=True)
    sidebar = page.find("#sidebar")
    page.wait_for(lambda: sidebar.rect["x"] + sidebar.rect["width"] <= 0)  # a drawer, closed
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 390  # no sideways scroll
    for control in ("#menu", "#prompt", "#send", "#model"):
        box = page.find(control).rect
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844, control
    driver.save_screenshot(str(tmp_path / "phone.png"))
    page.find("#menu").click()
    page.wait_for(lambda: sidebar.rect["x"] == 0)
    driver.save_screenshot(str(tmp_path / "phone-menu.png"))
    assert all((tmp_path / name).stat().st_size > 0 for name in ("light.png", "dark.png", "phone.png"))

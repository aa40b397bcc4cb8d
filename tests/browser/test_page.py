"""The chat page in a real Chromium (Debian's, through its chromedriver), against a
cluster started as a newcomer starts it: `chat-cluster up`, then the URL it prints.

Two browsers chat through two different nodes; the node under one of them is killed
and that page carries on from the other node, showing every message once, in order; a
page whose token expires asks for a new one and carries on with it.

    python3 -m nox -s browser
"""

import os
import re
import shutil
import signal
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

# The default suite does not install Selenium; `nox -s browser` does (browser.lock).
pytest.importorskip("selenium", reason="the browser tests run in `nox -s browser`")

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as Driver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from auth import keys
from tests.e2e.test_up import Up, free_base
from tests.support import SIGNING_KEY, http

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "images"


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("Chromium and chromedriver are needed: python3 -m nox -s browser installs them")
    return browser, driver


@pytest.fixture
def browsers() -> Iterator[list[WebDriver]]:
    binary, driver = chromium()
    opened: list[WebDriver] = []

    def open_one() -> WebDriver:
        options = Options()
        options.binary_location = binary
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--window-size=1100,800", "--disable-gpu"):  # fmt: skip
            options.add_argument(arg)
        browser = webdriver.Chrome(options=options, service=Driver(executable_path=driver))
        opened.append(browser)
        return browser

    yield [open_one(), open_one()]
    for browser in opened:
        browser.quit()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Up]:
    started = Up(free_base(2), tmp_path / "cluster", "--nodes", "2")
    started.start()
    yield started
    started.stop()


def page_url(up: Up) -> str:
    """The URL `up` printed, as a newcomer copies it."""
    for line in up.lines:
        found = re.search(r"(http://\S+/#\S+)", line)
        if found:
            return found.group(1)
    raise AssertionError("up printed no page URL:\n" + "".join(up.lines))


def url_for(user: str, nodes: list[str], ttl: float = 3600) -> str:
    token = keys.mint(SIGNING_KEY, user, ttl=ttl, read=("*",), send=("*",))
    fields = {"token": token, "nodes": ",".join(nodes), "channel": "general"}
    return f"{nodes[0]}/#{urllib.parse.urlencode(fields)}"


def wait(browser: WebDriver, check, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    WebDriverWait(browser, timeout).until(lambda b: check(b), message=what)


def texts(browser: WebDriver) -> list[str]:
    items = browser.find_elements(By.CSS_SELECTOR, "#messages li:not(.pending) .text")
    return [item.text for item in items]


def seqs(browser: WebDriver) -> list[int]:
    items = browser.find_elements(By.CSS_SELECTOR, "#messages li[data-seq]:not(.pending)")
    return [int(s) for item in items if (s := item.get_attribute("data-seq"))]


def status(browser: WebDriver) -> str:
    return browser.find_element(By.ID, "status").text


def online(browser: WebDriver) -> list[str]:
    """The users the page lists as online (read in one step: the list is re-rendered)."""
    script = "return [...document.querySelectorAll('#online li')].map((li) => li.dataset.user)"
    users: list[str] = browser.execute_script(script)
    return users


def say(browser: WebDriver, text: str) -> None:
    box = browser.find_element(By.ID, "text")
    box.send_keys(text)
    browser.find_element(By.CSS_SELECTOR, "#send-form button").click()


def test_two_browsers_chat_through_two_nodes_and_survive_a_node_kill(
    cluster: Up, browsers: list[WebDriver]
) -> None:
    one, two = browsers
    one.get(page_url(cluster))  # signed in as dev, on node 1 first
    two.get(url_for("bea", [cluster.node(2), cluster.node(1)]))
    for browser, node in ((one, cluster.node(1)), (two, cluster.node(2))):
        wait(browser, lambda b, n=node: status(b) == f"connected to {n}", f"connected to {node}")
    for browser in (one, two):  # each page lists both users, whichever node holds them
        wait(browser, lambda b: online(b) == ["bea", "dev"], "both users online")
    say(one, "hello from one")
    wait(two, lambda b: "hello from one" in texts(b), "two sees one's message")
    say(two, "hello from two")
    wait(one, lambda b: texts(b)[-2:] == ["hello from one", "hello from two"], "one sees two")
    one.save_screenshot(str(SHOTS / "chat-page.png"))

    # The node under the first browser dies; messages keep coming through the second.
    # Every status the page shows from now on is recorded: the loss may be on screen for
    # less than a poll (the client reconnects after a jittered 0-200 ms).
    one.execute_script(
        "window.shown = []; new MutationObserver(() => window.shown.push("
        "document.getElementById('status').textContent)).observe("
        "document.getElementById('status'), {childList: true, characterData: true, "
        "subtree: true});"
    )
    os.kill(cluster.pid("node-1"), signal.SIGKILL)
    wait(
        one,
        lambda b: any(t.startswith("lost ") for t in b.execute_script("return window.shown")),
        "the first page shows the loss",
    )
    for i in range(5):
        say(two, f"while one moves {i}")
    wait(one, lambda b: status(b) == f"connected to {cluster.node(2)}", "one on node 2", 30)
    expected = ["hello from one", "hello from two"] + [f"while one moves {i}" for i in range(5)]
    wait(one, lambda b: texts(b) == expected, "every message once, in order", 30)
    assert seqs(one) == sorted(seqs(one)) and len(set(seqs(one))) == len(seqs(one))
    say(one, "back")
    wait(two, lambda b: texts(b)[-1:] == ["back"], "and one still sends")
    assert online(one) == online(two) == ["bea", "dev"]  # dev moved; still listed once
    assert http("GET", cluster.node(2) + "/readyz")[0] == 200


def test_a_page_whose_token_expires_asks_for_a_new_one(
    cluster: Up, browsers: list[WebDriver]
) -> None:
    page, _ = browsers
    page.get(url_for("cy", [cluster.node(1)], ttl=6))
    wait(page, lambda b: status(b) == f"connected to {cluster.node(1)}", "connected")
    signin = page.find_element(By.ID, "signin")
    wait(page, lambda b: signin.is_displayed(), "the page asks for a new token", 20)
    assert "expires" in page.find_element(By.ID, "signin-why").text
    page.save_screenshot(str(SHOTS / "chat-page-token.png"))
    fresh = keys.mint(SIGNING_KEY, "cy", ttl=3600, read=("*",), send=("*",))
    page.find_element(By.ID, "token").send_keys(fresh)
    page.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    say(page, "renewed")
    wait(page, lambda b: "renewed" in texts(b), "a send after the new token", 20)
    assert status(page) == f"connected to {cluster.node(1)}"  # the same socket

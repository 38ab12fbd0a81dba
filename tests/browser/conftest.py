"""Real Chromium driven by Playwright, against pytest-django's live server and real workers.

Debian's ``chromium`` (``apt-get install chromium``; .ci/run installs it
when it is missing) is started with flags for a machine that refuses
outside connections. Screenshots go to var/screenshots/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from testsupport import ROOT

CHROMIUM = os.environ.get("TASKHUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--headless",
]
SCREENSHOTS = ROOT / "var" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium` (as .ci/run does).")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API leaves its event loop set as this thread's running
    # loop, and Django refuses database work under a running loop; the tests'
    # own database work happens between Playwright's calls, never inside them.
    # Module scope: the flag is not left set for the rest of the suite.
    mp = pytest.MonkeyPatch()
    mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            yield chromium
            chromium.close()
    finally:
        mp.undo()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def screenshot(page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> None:
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    return take


def log_in(page, username: str, password: str) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert "/admin/login/" not in page.url, f"{username} could not log in"

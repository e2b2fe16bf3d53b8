"""What every browser test shares: Chromium, a live server, a tab that records errors, sign-in.

The fixtures here are a pytest plugin (tests/conftest.py names it). A browser test
module sets `pytestmark = BROWSER` (PostgreSQL only: the pages are the same on
SQLite) and its own `app_config` fixture returning `live_app_config(live_port, stripe_sandbox)`.
`BROWSER_SCREENSHOTS=<dir>` keeps a screenshot of every page `Tab.shot` is asked for.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from recovery.demo import DEMO_PASSWORD, seed
from tests.conftest import missing

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot-dashboard.png"
SCREENSHOTS = os.environ.get("BROWSER_SCREENSHOTS")
WEBHOOK_SECRET = "whsec_browser_journey"

# Each browser test module sets `pytestmark = BROWSER` and imports the fixtures it uses.
BROWSER = [
    pytest.mark.browser,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]


@pytest.fixture
def live_port() -> int:
    """A free port for the live server, known before the app is built (it is BASE_URL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live_app_config(live_port: int, stripe_sandbox: Any) -> dict[str, Any]:
    """The app config of a browser test: real forms, this live server as BASE_URL, the sandbox."""
    stripe_sandbox.reset()
    return {
        "WTF_CSRF_ENABLED": True,  # the browser goes through the real forms
        # Stripe sends the customer back to BASE_URL: this live server.
        "BASE_URL": f"http://127.0.0.1:{live_port}",
        "STRIPE_SECRET_KEY": stripe_sandbox.api_key,
        "STRIPE_API_BASE": stripe_sandbox.base_url,
        # The sandbox signs the events it delivers to the live server with this.
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (pip install -r requirements-dev.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Error as error:
        playwright.stop()
        missing(f"Chromium at {CHROMIUM} does not start: {str(error).splitlines()[0]}")
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def live_server(app: Flask, live_port: int) -> Iterator[str]:
    """Serve the test app (same database, same config) from a thread on a free port."""
    server = make_server("127.0.0.1", live_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()


@dataclass
class Tab:
    """A page plus what went wrong in it: console errors, page errors, failed requests."""

    page: Any
    # Our pages' origin: what happens on other sites (the Stripe sandbox's page) is theirs.
    origin: str = ""
    errors: list[str] = field(default_factory=list)

    def ours(self, url: str | None) -> bool:
        return not self.origin or not url or url.startswith(self.origin)

    def shot(self, name: str, path: Path | None = None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(path))
        if SCREENSHOTS:
            self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))

    def assert_fits_width(self) -> None:
        widths = self.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"page scrolls sideways on {self.page.url}: {widths}"

    def assert_clean(self) -> None:
        assert self.errors == [], "console errors or CSP violations:\n" + "\n".join(self.errors)


def _console(tab: Tab, message: Any) -> None:
    url = message.location.get("url") or tab.page.url
    if message.type == "error" and tab.ours(url):
        tab.errors.append(f"console: {message.text} ({url})")


def _request_failed(tab: Tab, request: Any) -> None:
    # A click that navigates while the page's deferred scripts still load aborts
    # them (net::ERR_ABORTED): the browser moving on, not a failure of the page.
    # A blocked or unreachable resource fails with another reason and counts.
    if request.failure != "net::ERR_ABORTED" and tab.ours(request.url):
        tab.errors.append(f"request failed: {request.url} {request.failure}")


@pytest.fixture
def open_tab(browser: Any, live_server: str) -> Iterator[Callable[..., Tab]]:
    contexts = []

    def open_(viewport: dict[str, int] = DESKTOP, **options: Any) -> Tab:
        context = browser.new_context(viewport=viewport, base_url=live_server, **options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        tab = Tab(context.new_page(), origin=live_server)
        tab.page.on("console", lambda m: _console(tab, m))
        tab.page.on("pageerror", lambda e: tab.ours(tab.page.url) and tab.errors.append(f"page error: {e}"))
        tab.page.on("requestfailed", lambda r: _request_failed(tab, r))
        return tab

    yield open_
    for context in contexts:  # before the server stops, so no connection is left open
        context.close()


@pytest.fixture
def demo(db: Any) -> Any:
    """The README demo: Demo Coffee Roasters, a user per role, 200 failed transactions."""
    result = seed(db.session)
    db.session.commit()
    return result


def sign_in(tab: Tab, email: str = "owner@demo.example", shot: str | None = None) -> None:
    from playwright.sync_api import expect

    page = tab.page
    page.goto("/transactions")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    if shot:
        tab.shot(shot)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/transactions$"))
    expect(page.get_by_role("heading", name="Failed transactions")).to_be_visible()


@pytest.fixture
def background_worker(app: Flask) -> Iterator[list[BaseException]]:
    """A real RQ worker taking jobs as they come, as `flask worker` does, in a thread of this process.

    SimpleWorker runs each job in its own thread (no fork), inside an app context
    of its own, so jobs use their own database session. It works in short bursts
    until the test ends; jobs that fail are reported in the yielded list.
    """
    from rq import SimpleWorker
    from rq.registry import FailedJobRegistry
    from rq.timeouts import TimerDeathPenalty

    from recovery.queue import get_queue, redis_connection

    class ThreadWorker(SimpleWorker):
        death_penalty_class = TimerDeathPenalty  # SIGALRM is for the main thread only

        def _install_signal_handlers(self) -> None:
            pass  # only the main thread may install them; the test stops the loop itself

    stop = threading.Event()
    problems: list[BaseException] = []

    def run() -> None:
        with app.app_context():
            while not stop.is_set():
                try:
                    worker = ThreadWorker(["default"], connection=redis_connection(app))
                    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
                except Exception as error:  # reported by the test, not lost in a thread
                    problems.append(error)
                stop.wait(0.1)

    thread = threading.Thread(target=run, name="rq-worker", daemon=True)
    thread.start()
    try:
        yield problems
    finally:
        stop.set()
        thread.join(timeout=10)
    failed = FailedJobRegistry(queue=get_queue(app=app))
    for job_id in failed.get_job_ids():
        job = failed.job_class.fetch(job_id, connection=failed.connection)
        problems.append(RuntimeError(f"job {job.func_name} failed: {job.latest_result().exc_string}"))  # type: ignore[union-attr]
    assert problems == [], problems

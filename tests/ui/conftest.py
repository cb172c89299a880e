"""Fixtures of the dashboard tests: one deployment per test module (:mod:`ui_stack`), HTTP sessions signed in
through the real login, and a real headless Chromium (Debian's ``chromium``) driven by Playwright for Python.

Playwright is pointed at the system browser with ``executable_path``; it never downloads one. Every browser
page fails its test on a console error, an uncaught exception, a CSP violation or a request that leaves
127.0.0.1 (such requests are aborted and recorded). Screenshots go to ``$ZHISUAN_SCREENS`` (default
``/tmp/zhisuan-screens``).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from ui_stack import Dashboard, running_dashboard

CHROMIUM = os.environ.get("ZHISUAN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENS = Path(os.environ.get("ZHISUAN_SCREENS", "/tmp/zhisuan-screens"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real headless Chromium through Playwright")


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """Per module, so the agents and the scheduler do not keep running through the rest of the suite."""
    with running_dashboard(tmp_path_factory.mktemp("dashboard")) as started:
        yield started


@pytest.fixture(autouse=True)
def _no_jobs_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test of the deployment starts with no active job (capacity free), whatever the previous one left."""
    if "dash" in request.fixturenames:
        request.getfixturevalue("dash").cancel_all()
    yield


def ui_login(dash: Dashboard, who: str) -> httpx.Client:
    """An HTTP client holding a dashboard session of ``who`` (through the real login form)."""
    client = httpx.Client(base_url=dash.url, timeout=30, follow_redirects=False)
    response = client.post("/ui/login", data={"token": dash.tokens[who], "next": "/ui/"}, headers={"Origin": dash.url})
    assert response.status_code == 303, response.text
    return client


@pytest.fixture
def session_of(dash: Dashboard) -> Iterator[Callable[[str], httpx.Client]]:
    clients: list[httpx.Client] = []

    def make(who: str) -> httpx.Client:
        client = ui_login(dash, who)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# ----------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        warnings.warn("no chromium on this machine: the dashboard's BROWSER TESTS ARE SKIPPED", stacklevel=1)
        pytest.skip(
            "BROWSER TESTS NOT RUN: install Debian's chromium (apt-get install chromium) or set ZHISUAN_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watch:
    """What a page did that a test must not let pass."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        errors = [e for e in self.console_errors if not any(a in e for a in self.allowed)]
        return [
            *(f"console: {e}" for e in errors),
            *(f"page error: {e}" for e in self.page_errors),
            *(f"left 127.0.0.1: {u}" for u in self.outside),
        ]


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def new_page(
    browser: Any, dash: Dashboard, watch: Watch, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Any]]:
    """``new_page(who=None, lang="en")``: a fresh browser context and page (signed in as ``who`` when given)."""
    contexts: list[Any] = []

    def make(who: str | None = None, lang: str = "en", viewport: tuple[int, int] = (1400, 1000)) -> Any:
        context = browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]},
            locale="zh-CN" if lang == "zh" else "en-US",
            extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9" if lang == "zh" else "en-US,en;q=0.9"},
        )
        contexts.append(context)

        def route(route: Any) -> None:
            host = urlsplit(route.request.url).hostname
            if route.request.url.startswith(("data:", "blob:", "about:")) or host == "127.0.0.1":
                route.continue_()
            else:
                watch.outside.append(route.request.url)
                route.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on("console", lambda m: watch.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: watch.page_errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())
        if who is not None:
            page.goto(f"{dash.url}/ui/login")
            page.fill("#token", dash.tokens[who])
            page.click("button[type=submit]")
            page.wait_for_url(f"{dash.url}/ui/")
        return page

    yield make
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for index, context in enumerate(contexts):
            for number, page in enumerate(context.pages):
                SCREENS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENS / f"FAILED-{request.node.name}-{index}-{number}.png"), full_page=True)
    for context in contexts:
        context.close()
    problems = watch.problems()
    assert not problems, problems


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def screenshot(page: Any, name: str) -> Path:
    SCREENS.mkdir(parents=True, exist_ok=True)
    path = SCREENS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

"""A real browser (Debian's Chromium, driven by Playwright) against real `serve`
and `emulator` processes: a person opens a connect link, signs in at the
emulator's Workfront page, allows access and lands back in the app; the app
then reads the token and uses it on the emulator's API. Also the ways it goes
wrong: access denied, a code that expired, a used or expired link, Workfront
failing, another instance answering.

Each page visited is saved as a full-page screenshot under
test-artifacts/screenshots/ (not committed) for a person to look at.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Route, async_playwright

from tests.support import ADMIN_KEY, CLIENT_ID, CLIENT_SECRET, REPO
from tests.support.chromium import INSTALL_HINT, find_chromium
from tests.support.db import TABLES
from tests.support.processes import env_without_broker, free_port, start, stop, wait_ready

# Without these, Chromium on a closed network spends its time (and fails)
# reaching Google's services, and refuses to run as root in a sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
API_VERSION = "v21.0"


# The application a connect link returns to --------------------------------------------


class _AppPage(BaseHTTPRequestHandler):
    """The internal app's landing page: shows what the broker sent back."""

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        connection = html.escape(query.get("connection_id", ["(none)"])[0])
        status = html.escape(query.get("status", ["(none)"])[0])
        body = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<title>Example app</title></head><body><main><h1>Example app</h1>"
            f"<p>Workfront status: <b id='status'>{status}</b></p>"
            f"<p>Connection: <code id='connection'>{connection}</code></p></main></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _AppPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/app/"
    server.shutdown()
    server.server_close()


# Real processes: the emulator and one broker ------------------------------------------


@dataclass
class Stack:
    broker: str
    emulator: str
    app: str
    api: httpx.AsyncClient
    log_dir: Path

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def emulator_settings(self, **changes: Any) -> None:
        response = await self.api.patch(f"{self.emulator}/__emulator/settings", json=changes)
        response.raise_for_status()

    async def connect_link(self, external_ref: str) -> str:
        response = await self.api.post(
            f"{self.broker}/v1/connect-sessions",
            json={"external_ref": external_ref, "return_url": f"{self.app}done"},
            headers=self.admin,
        )
        assert response.status_code == 201, response.text
        url: str = response.json()["url"]
        return url


@pytest.fixture(scope="module")
async def stack(
    database_url: str, encryption_keys: str, app_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    log_dir = tmp_path_factory.mktemp("browser-e2e")
    broker_port, emulator_port = free_port(), free_port()
    broker = f"http://127.0.0.1:{broker_port}"
    emulator = f"http://127.0.0.1:{emulator_port}"
    redirect_uri = f"{broker}/oauth/callback"
    env = env_without_broker()
    emulator_log = log_dir / "emulator.log"
    emulator_process = start(
        [
            "emulator",
            "--port",
            str(emulator_port),
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--redirect-uri",
            redirect_uri,
            "--domain",
            "acme",
            "--lane",
            "my",
        ],
        env,
        emulator_log,
    )
    broker_env = env_without_broker(
        BROKER_DATABASE_URL=database_url,
        BROKER_WORKFRONT_URL=emulator,
        BROKER_WORKFRONT_DOMAIN="acme",
        BROKER_WORKFRONT_LANE="my",
        BROKER_CLIENT_ID=CLIENT_ID,
        BROKER_CLIENT_SECRET=CLIENT_SECRET,
        BROKER_REDIRECT_URI=redirect_uri,
        BROKER_ENCRYPTION_KEYS=encryption_keys,
        BROKER_ADMIN_API_KEY=ADMIN_KEY,
        BROKER_ALLOWED_RETURN_URLS=app_url,
        BROKER_STATUS_PAGE_ENABLED="true",
        BROKER_REFRESHER_ENABLED="false",
    )
    broker_log = log_dir / "serve.log"
    broker_process = start(["serve", "--port", str(broker_port)], broker_env, broker_log)
    try:
        await wait_ready(f"{emulator}/__emulator/settings", emulator_process, emulator_log)
        await wait_ready(f"{broker}/readyz", broker_process, broker_log)
        async with httpx.AsyncClient(timeout=30) as api:
            yield Stack(broker=broker, emulator=emulator, app=app_url, api=api, log_dir=log_dir)
    finally:
        stop(broker_process)
        stop(emulator_process)


@pytest.fixture
async def fresh(stack: Stack, db: asyncpg.Connection) -> Stack:
    await db.execute(f"TRUNCATE {', '.join(TABLES)}")
    (await stack.api.post(f"{stack.emulator}/__emulator/reset")).raise_for_status()
    return stack


# The browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    # None: Playwright's own download, if `make test` could install one.
    chromium = find_chromium()
    async with async_playwright() as playwright:
        try:
            launched = await playwright.chromium.launch(
                executable_path=chromium, args=CHROMIUM_ARGS, headless=True
            )
        except Exception as exc:
            pytest.fail(f"Chromium could not be started ({type(exc).__name__}): {INSTALL_HINT}")
        yield launched
        await launched.close()


@dataclass
class Visit:
    """One person's browser tab; every page it settles on is photographed."""

    page: Page
    name: str
    shots: list[Path] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    async def shot(self, label: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{len(self.shots) + 1:02d}-{label}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)

    async def heading(self) -> str:
        return (await self.page.locator("h1").inner_text()).strip()

    async def sign_in_at_workfront(self, username: str, decision: str) -> None:
        page = self.page
        await page.wait_for_url(re.compile(r".*/integrations/oauth2/authorize.*"))
        await self.shot("workfront-sign-in")
        await page.get_by_label("Username").fill(username)
        await page.get_by_label("Password").fill("correct horse")
        await page.get_by_role("button", name=decision).click()


@pytest.fixture
async def visit(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Visit]:
    context = await browser.new_context(viewport={"width": 1000, "height": 700})
    context.set_default_timeout(15_000)
    page = await context.new_page()
    name = request.node.name.removeprefix("test_")
    for old in SCREENSHOTS.glob(f"{name}-*.png"):
        old.unlink()
    visit = Visit(page=page, name=name)

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            visit.csp_violations.append(message.text)

    page.on("console", on_console)
    yield visit
    await context.close()
    assert visit.csp_violations == [], "the pages broke their own Content-Security-Policy"


async def _error_code(visit: Visit) -> str:
    return (await visit.page.locator("#error-code").inner_text()).strip()


# The flows ------------------------------------------------------------------------------


async def test_connect_link_to_app_then_token_works_on_workfront(
    fresh: Stack, visit: Visit
) -> None:
    page = visit.page
    link = await fresh.connect_link("app-user-1")
    await page.goto(link)
    assert await visit.heading() == "Connect your Workfront account"
    await visit.shot("connect-link")
    # Keyboard users see where they are: the button takes focus with a visible ring.
    await page.keyboard.press("Tab")
    focused = page.locator("#connect")
    assert await focused.evaluate("el => el === document.activeElement")
    outline = await focused.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline == "solid"
    await visit.shot("connect-link-focused")
    await page.get_by_role("link", name="Connect Workfront").click()
    await visit.sign_in_at_workfront("zoe", "Allow")

    await page.wait_for_url(f"{fresh.app}done?*")
    await visit.shot("back-in-the-app")
    query = parse_qs(urlsplit(page.url).query)
    assert query["status"] == ["connected"]
    connection_id = query["connection_id"][0]
    assert await page.locator("#connection").inner_text() == connection_id

    # The app finds the connection by its own reference and uses its token.
    listed = await fresh.api.get(
        f"{fresh.broker}/v1/connections",
        params={"external_ref": "app-user-1"},
        headers=fresh.admin,
    )
    assert [c["id"] for c in listed.json()] == [connection_id]
    token = await fresh.api.get(
        f"{fresh.broker}/v1/connections/{connection_id}/token", headers=fresh.admin
    )
    assert token.status_code == 200, token.text
    session = await fresh.api.get(
        f"{fresh.emulator}/attask/api/{API_VERSION}/session",
        headers={"sessionID": token.json()["session_id"]},
    )
    assert session.status_code == 200, session.text
    assert session.json()["data"]["userName"] == "zoe"

    # The link worked once; opened again it explains and offers no retry.
    response = await page.goto(link)
    assert response is not None
    assert response.status == 400
    assert await visit.heading() == "This connect link cannot be used"
    assert await _error_code(visit) == "link_used"
    assert await page.locator("#retry").count() == 0
    assert await page.get_by_role("link", name="Back to the application").count() == 1
    await visit.shot("link-used")


async def test_access_denied_then_retry_with_the_same_link(fresh: Stack, visit: Visit) -> None:
    page = visit.page
    link = await fresh.connect_link("app-user-2")
    await page.goto(link)
    await page.get_by_role("link", name="Connect Workfront").click()
    await visit.sign_in_at_workfront("yves", "Deny")
    await page.wait_for_url(re.compile(r".*/oauth/callback.*"))
    assert await visit.heading() == "Access was not granted"
    assert await _error_code(visit) == "access_denied"
    await visit.shot("access-denied")
    await page.get_by_role("link", name="Try again").click()
    assert page.url == link
    assert await visit.heading() == "Connect your Workfront account"
    await visit.shot("connect-link-again")
    await page.get_by_role("link", name="Connect Workfront").click()
    await visit.sign_in_at_workfront("yves", "Allow")
    await page.wait_for_url(f"{fresh.app}done?*")
    await visit.shot("back-in-the-app")


async def test_code_expires_before_the_broker_exchanges_it(fresh: Stack, visit: Visit) -> None:
    page = visit.page
    await fresh.emulator_settings(code_ttl_seconds=0)
    link = await fresh.connect_link("app-user-3")
    await page.goto(link)
    await page.get_by_role("link", name="Connect Workfront").click()
    await visit.sign_in_at_workfront("xena", "Allow")
    await page.wait_for_url(re.compile(r".*/oauth/callback.*"))
    assert await visit.heading() == "The sign-in took too long"
    assert await _error_code(visit) == "code_refused"
    await visit.shot("code-expired")
    # The link was not spent: Try again goes back to it.
    assert await page.locator("#retry").get_attribute("href") == link


async def test_workfront_failing_and_another_instance(fresh: Stack, visit: Visit) -> None:
    page = visit.page
    link = await fresh.connect_link("app-user-4")
    await page.goto(link)
    await page.get_by_role("link", name="Connect Workfront").click()
    # Queued now, so only the broker's code exchange meets it.
    faults = {"faults": [{"kind": "status", "status": 503}]}
    (await fresh.api.post(f"{fresh.emulator}/__emulator/faults", json=faults)).raise_for_status()
    await visit.sign_in_at_workfront("walt", "Allow")
    await page.wait_for_url(re.compile(r".*/oauth/callback.*"))
    assert await visit.heading() == "Workfront is not answering"
    await visit.shot("workfront-unreachable")

    await fresh.emulator_settings(domain="elsewhere")
    try:
        await page.get_by_role("link", name="Try again").click()
        await page.get_by_role("link", name="Connect Workfront").click()
        await visit.sign_in_at_workfront("walt", "Allow")
        await page.wait_for_url(re.compile(r".*/oauth/callback.*"))
        assert await visit.heading() == "That was a different Workfront instance"
        await visit.shot("wrong-instance")
    finally:
        await fresh.emulator_settings(domain="acme")


async def test_expired_and_unknown_links(
    fresh: Stack, visit: Visit, db: asyncpg.Connection
) -> None:
    page = visit.page
    link = await fresh.connect_link("app-user-5")
    await db.execute("UPDATE connect_sessions SET expires_at = now() - interval '1 second'")
    await page.goto(link)
    assert await _error_code(visit) == "link_expired"
    await visit.shot("link-expired")
    await page.goto(f"{fresh.broker}/connect?session=not-a-real-link")
    assert await _error_code(visit) == "link_unknown"
    assert await page.locator("#back").count() == 0
    await visit.shot("link-unknown")


async def test_operator_page_success_and_status(
    fresh: Stack, visit: Visit, browser: Browser
) -> None:
    page = visit.page
    await page.goto(f"{fresh.broker}/connect")
    await visit.shot("operator-connect")
    await page.get_by_role("link", name="Connect Workfront").click()
    await visit.sign_in_at_workfront("vera", "Allow")
    await page.wait_for_url(re.compile(r".*/oauth/callback.*"))
    assert await visit.heading() == "Workfront is connected"
    assert re.fullmatch(r"[0-9a-f-]{36}", await page.locator("#connection-id").inner_text())
    await visit.shot("success")
    # Reloading the callback: its state was used once already.
    await page.reload()
    assert await _error_code(visit) == "state_used"
    await visit.shot("state-used")

    # The browser's own Basic prompt, answered with an API key as the password
    # (headless Chromium cannot show the prompt, so the context carries it).
    made = await fresh.api.post(
        f"{fresh.broker}/v1/clients",
        json={"name": "reader", "scopes": ["connections:read"]},
        headers=fresh.admin,
    )
    reader_key = made.json()["api_key"]
    for label, key, expected in (("status-forbidden", reader_key, 403), ("status", ADMIN_KEY, 200)):
        context = await browser.new_context(
            http_credentials={"username": "ops", "password": key},
            viewport={"width": 1280, "height": 700},  # an operator's desktop
        )
        try:
            status_page = await context.new_page()
            shown = await status_page.goto(f"{fresh.broker}/status")
            assert shown is not None
            assert shown.status == expected
            path = SCREENSHOTS / f"{visit.name}-{90 + expected // 100:02d}-{label}.png"
            await status_page.screenshot(path=str(path), full_page=True)
            if expected == 200:
                heading = (await status_page.locator("h1").inner_text()).strip()
                assert heading == "Broker status"
                assert "vera" not in await status_page.content()  # ids, not names or tokens
        finally:
            await context.close()


async def test_api_docs_work_offline_and_try_it_out_reads_a_token(
    fresh: Stack, visit: Visit
) -> None:
    """/docs and /redoc load nothing but the broker (operators read them inside
    networks without a CDN): Swagger UI lists every operation, and "Try it out"
    on the token read works with an API key."""
    page = visit.page
    link = await fresh.connect_link("docs-reader")
    await page.goto(link)
    await page.get_by_role("link", name="Connect Workfront").click()
    await visit.sign_in_at_workfront("dora", "Allow")
    await page.wait_for_url(f"{fresh.app}done?*")
    connection_id = parse_qs(urlsplit(page.url).query)["connection_id"][0]

    elsewhere: list[str] = []

    async def only_the_broker(route: Route) -> None:
        if route.request.url.startswith(fresh.broker):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_the_broker)
    operations = [
        op
        for item in (await fresh.api.get(f"{fresh.broker}/openapi.json")).json()["paths"].values()
        for op in item.values()
    ]
    await page.goto(f"{fresh.broker}/docs")
    blocks = page.locator(".opblock")
    await blocks.nth(len(operations) - 1).wait_for()
    assert await blocks.count() == len(operations)
    await visit.shot("swagger-ui")

    await page.locator(".btn.authorize").first.click()
    await page.locator(".modal-ux input").first.fill(ADMIN_KEY)
    await page.locator(".modal-ux .auth-btn-wrapper .authorize").click()
    await page.locator(".modal-ux .btn-done").click()
    token_read = page.locator("#operations-connections-connections-get_token")
    await token_read.locator(".opblock-summary").click()
    await token_read.locator(".try-out__btn").click()
    await token_read.locator("tr[data-param-name='connection_id'] input").fill(connection_id)
    await token_read.locator(".execute").click()
    status = token_read.locator(".live-responses-table tbody .response-col_status").first
    await status.wait_for()
    assert (await status.inner_text()).strip() == "200"
    assert "session_id" in await token_read.locator(".live-responses-table").inner_text()
    await visit.shot("swagger-try-it-out")

    await page.goto(f"{fresh.broker}/redoc")
    await page.get_by_role("heading", name="Get a live Workfront sessionID").wait_for()
    await visit.shot("redoc")
    assert elsewhere == []
    # ReDoc's footer always asks its CDN for a logo: the policy blocks it (and
    # ReDoc hides it). That one refusal is expected; any other is a defect.
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    visit.csp_violations[:] = [v for v in visit.csp_violations if logo not in v]


# Two instances ---------------------------------------------------------------------------

PREVIEW_ID, PREVIEW_SECRET = "preview-app", "preview-secret-" + "p" * 24


@pytest.fixture
async def two_instances(
    database_url: str, encryption_keys: str, db: asyncpg.Connection, tmp_path: Path
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """`serve` with a default instance (acme/my) and a preview lane
    (acme/preview, BROKER_INSTANCES_FILE), each its own `emulator` process and
    app; the broker's URL and each emulator's."""
    await db.execute(f"TRUNCATE {', '.join(TABLES)}")
    broker_port = free_port()
    broker = f"http://127.0.0.1:{broker_port}"
    redirect_uri = f"{broker}/oauth/callback"
    env = env_without_broker()
    emulators = {}
    processes = []
    for name, client_id, secret, lane in (
        ("default", CLIENT_ID, CLIENT_SECRET, "my"),
        ("preview", PREVIEW_ID, PREVIEW_SECRET, "preview"),
    ):
        port = free_port()
        emulators[name] = f"http://127.0.0.1:{port}"
        log = tmp_path / f"emulator-{name}.log"
        args = ["emulator", "--port", str(port), "--client-id", client_id]
        args += ["--client-secret", secret, "--redirect-uri", redirect_uri]
        args += ["--domain", "acme", "--lane", lane]
        processes.append((start(args, env, log), log, f"{emulators[name]}/__emulator/settings"))
    instances = tmp_path / "instances.toml"
    instances.write_text(
        f'[instances.preview]\nworkfront_url = "{emulators["preview"]}"\n'
        f'client_id = "{PREVIEW_ID}"\nclient_secret = "{PREVIEW_SECRET}"\n'
        'domain = "acme"\nlane = "preview"\n'
    )
    broker_env = env_without_broker(
        BROKER_DATABASE_URL=database_url,
        BROKER_WORKFRONT_URL=emulators["default"],
        BROKER_WORKFRONT_DOMAIN="acme",
        BROKER_WORKFRONT_LANE="my",
        BROKER_CLIENT_ID=CLIENT_ID,
        BROKER_CLIENT_SECRET=CLIENT_SECRET,
        BROKER_INSTANCES_FILE=str(instances),
        BROKER_REDIRECT_URI=redirect_uri,
        BROKER_ENCRYPTION_KEYS=encryption_keys,
        BROKER_ADMIN_API_KEY=ADMIN_KEY,
        BROKER_REFRESHER_ENABLED="false",
    )
    log = tmp_path / "serve.log"
    processes.append((start(["serve", "--port", str(broker_port)], broker_env, log), log, ""))
    try:
        for process, log, ready in processes[:-1]:
            await wait_ready(ready, process, log)
        await wait_ready(f"{broker}/readyz", processes[-1][0], processes[-1][1])
        yield broker, emulators
    finally:
        for process, _, _ in processes:
            stop(process)


async def test_the_connect_page_offers_each_instance_and_connects_one_user_on_each(
    two_instances: tuple[str, dict[str, str]], visit: Visit
) -> None:
    broker, emulators = two_instances
    page = visit.page
    for name in ("default", "preview"):
        await page.goto(f"{broker}/connect")
        assert await visit.heading() == "Connect your Workfront account"
        await visit.shot(f"choose-{name}")
        await page.locator(f"#connect-{name}").click()
        await page.wait_for_url(f"{emulators[name]}/integrations/oauth2/authorize*")
        await visit.sign_in_at_workfront("wanda", "Allow")
        await page.wait_for_url(re.compile(r".*/oauth/callback.*"))
        assert await visit.heading() == "Workfront is connected"
        await visit.shot(f"connected-{name}")
    async with httpx.AsyncClient(base_url=broker) as api:
        listed = await api.get("/v1/connections", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert sorted(c["instance"] for c in listed.json()) == ["default", "preview"]

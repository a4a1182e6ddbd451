"""Headless Chromium against a real gateway: <presence-dot>, reconnects and the demo page.

The gateway runs as a subprocess in dev mode and serves the pages itself (Chromium refuses
loopback WebSockets from pages whose origin it cannot place).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.config import dev_settings
from tests.sendhook import post, tencent_call

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APP = "demo"
DEV = dev_settings().apps[APP]  # what dev mode configures
STARTUP_TIMEOUT_S = 20.0
# Generous for CI; the one-second promise is checked with its own timeout below.
WAIT_MS = 10_000


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayProcess:
    """`python -m gateway serve` in dev mode on a fixed port; can be killed and started again."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    def url(self, path: str) -> str:
        """Absolute URL of `path` on this gateway."""
        return self.base_url + path

    async def start(self) -> None:
        """Start the process and return once GET /healthz answers 200."""
        assert self._proc is None, "already running"
        # Dev mode, in memory: no config file and no Redis, whatever the caller's environment.
        env = {k: v for k, v in os.environ.items() if k not in {"PRESENCE_CONFIG", "REDIS_URL"}}
        self._log = self.log_path.open("ab")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"gateway exited during startup:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.url("/healthz"))).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gateway not healthy after {STARTUP_TIMEOUT_S}s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.05)  # polling against the deadline above

    async def kill(self) -> None:
        """SIGKILL the process (no graceful close frames) and wait for it to be gone."""
        await self._stop(graceful=False)

    async def stop(self) -> None:
        """Terminate the process, killing it if it does not exit within 10 s."""
        await self._stop(graceful=True)

    async def _stop(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if graceful:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            else:
                proc.kill()
                await proc.wait()
        elif proc is not None:
            await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the gateway printed."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; skipped when missing, except under CI=true where that is a failure."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing (CI=true: browser tests must run)")
        pytest.skip(f"{CHROMIUM} is missing")
    return CHROMIUM


@pytest.fixture
async def gateway(chromium: Path, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """A dev-mode gateway on a free port, stopped after the test."""
    gw = GatewayProcess(free_port(), tmp_path / "gateway.log")
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """Headless Chromium driven by Playwright."""
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser, gateway: GatewayProcess) -> AsyncIterator[Page]:
    """A fresh page; fails the test if the page threw an uncaught error."""
    context = await browser.new_context(viewport={"width": 1200, "height": 860})
    new_page = await context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield new_page
    finally:
        await context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
async def http(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the gateway, to post webhooks as a provider would."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=5.0) as client:
        yield client


_last_ms = 0


def event_ms() -> int:
    """Now in ms, strictly increasing between calls (device records are last-writer-wins)."""
    global _last_ms
    _last_ms = max(time.time_ns() // 1_000_000, _last_ms + 1)
    return _last_ms


async def tencent(http: httpx.AsyncClient, user: str, action: str, platform: str = "iOS") -> None:
    """Post a Tencent IM State.StateChange webhook and check that it was acked OK."""
    assert DEV.tencent is not None
    req = tencent_call(DEV.tencent, user, action, platform, event_ms())
    response = await post(http, APP, "tencent", req)
    assert response.status_code == 200, response.text
    assert response.json()["ActionStatus"] == "OK", response.text


async def test_dot_follows_tencent_webhooks(
    page: Page, gateway: GatewayProcess, http: httpx.AsyncClient
) -> None:
    """A dot turns online within 1 s of a Tencent Login and shows "last seen" after a Disconnect."""
    await page.goto(gateway.url("/demo/test-dots.html"))
    bob = page.locator('presence-dot[user="bob"]').first
    await expect(page.locator("#status")).to_have_text("open", timeout=WAIT_MS)
    await expect(bob).to_have_attribute("status", "offline", timeout=WAIT_MS)
    await expect(bob).to_have_attribute("aria-label", "bob was never seen")
    await expect(bob).to_have_attribute("role", "img")

    await tencent(http, "bob", "Login", "iOS")
    await expect(bob).to_have_attribute("status", "online", timeout=1_000)
    await expect(bob).to_have_attribute("aria-label", "bob is online")
    await expect(bob.locator('[part="platform"] svg')).to_have_count(1)
    second = page.locator('presence-dot[user="bob"]').nth(1)
    await expect(second).to_have_attribute("aria-label", "Bob (second dot) is online")

    await tencent(http, "bob", "Disconnect", "iOS")
    await expect(bob).to_have_attribute("status", "offline", timeout=1_000)
    await expect(bob).to_have_attribute(
        "aria-label", re.compile(r"^bob was last seen (just now|1 minute ago)$")
    )

    # The dot created after usePresence() works like the ones that were there before it.
    dave = page.locator('presence-dot[user="dave"]')
    await expect(dave).to_have_attribute("status", "offline")
    await tencent(http, "dave", "Login", "Web")
    await expect(dave).to_have_attribute("status", "online", timeout=1_000)
    await expect(page.locator("#errors li")).to_have_count(0)


async def test_dot_survives_gateway_restart(
    page: Page, gateway: GatewayProcess, http: httpx.AsyncClient
) -> None:
    """After the gateway is killed and restarted on its port, the page reconnects and re-watches."""
    await page.goto(gateway.url("/demo/test-dots.html"))
    status = page.locator("#status")
    carol = page.locator('presence-dot[user="carol"]')
    await expect(status).to_have_text("open", timeout=WAIT_MS)
    await tencent(http, "carol", "Login", "Web")
    await expect(carol).to_have_attribute("status", "online", timeout=WAIT_MS)

    await gateway.kill()
    await expect(status).to_have_text("reconnecting", timeout=WAIT_MS)
    await gateway.start()
    await expect(status).to_have_text("open", timeout=15_000)
    # The restarted in-memory gateway has forgotten carol (v starts again at 0): its snapshot
    # on the new connection must replace the client's older state with the higher v.
    await expect(carol).to_have_attribute("status", "offline", timeout=WAIT_MS)
    await expect(carol).to_have_attribute("aria-label", "carol was never seen")

    await tencent(http, "carol", "Login", "Android")
    await expect(carol).to_have_attribute("status", "online", timeout=WAIT_MS)
    await expect(carol).to_have_attribute("aria-label", "carol is online")


@pytest.mark.parametrize(
    ("provider", "user", "offline"),
    [
        ("Tencent IM", "alice", "Logout"),
        ("RongCloud", "bob", "Offline"),
        ("OpenIM", "carol", "Offline"),
        ("Easemob", "dave", "Logout"),
        ("Easemob", "alice", "Replaced"),
        ("NetEase", "erin", "Logout"),
        ("WuKongIM", "frank", "Offline"),
    ],
)
async def test_demo_panel_changes_presence(
    page: Page, gateway: GatewayProcess, provider: str, user: str, offline: str
) -> None:
    """The demo panel posts a real provider webhook that the gateway accepts and the dot follows."""
    await page.goto(gateway.url("/"))
    await expect(page.locator("#conn")).to_have_attribute("data-status", "open", timeout=WAIT_MS)
    dot = page.locator(f'#friends presence-dot[user="{user}"]')
    detail = page.locator(f'.friend[data-user="{user}"] .detail')
    await expect(dot).to_have_attribute("status", "offline", timeout=WAIT_MS)

    await page.locator("#hook-user").select_option(user)
    await page.locator("#hook-provider label", has_text=provider).click()
    await page.locator('#hook-actions button[data-presence="online"]').click()
    await expect(page.locator("#log li").first).to_have_attribute("data-http-status", "200")
    await expect(dot).to_have_attribute("status", "online", timeout=WAIT_MS)
    await expect(detail).to_have_text(re.compile(r"^Online on \S"))

    await page.locator('#hook-actions button[data-presence="offline"]', has_text=offline).click()
    await expect(page.locator("#log li")).to_have_count(2)
    await expect(page.locator("#log li").first).to_have_attribute("data-http-status", "200")
    await expect(dot).to_have_attribute("status", "offline", timeout=WAIT_MS)
    await expect(detail).to_have_text(re.compile(r"^Last seen "))


async def test_demo_panel_sets_and_clears_a_custom_status(
    page: Page, gateway: GatewayProcess
) -> None:
    """The panel's Tencent CustomStatusChange shows in the friend's row and label, then clears."""
    await page.goto(gateway.url("/"))
    await expect(page.locator("#conn")).to_have_attribute("data-status", "open", timeout=WAIT_MS)
    detail = page.locator('.friend[data-user="carol"] .detail')
    dot = page.locator('#friends presence-dot[user="carol"]')
    await page.locator("#hook-user").select_option("carol")
    await page.locator("#hook-provider label", has_text="Tencent").click()
    await page.locator("#hook-custom").fill("In a <b>meeting</b>")
    await page.locator('#hook-actions button[data-presence="custom"]').click()
    await expect(page.locator("#log li").first).to_have_attribute("data-http-status", "200")
    await expect(detail).to_have_text(re.compile(r"· In a <b>meeting</b>$"), timeout=WAIT_MS)
    await expect(dot).to_have_attribute("aria-label", re.compile(r": In a <b>meeting</b>$"))
    await page.locator("#hook-custom").fill("")
    await page.locator('#hook-actions button[data-presence="custom"]').click()
    await expect(detail).not_to_have_text(re.compile("meeting"), timeout=WAIT_MS)


async def test_demo_screenshot(
    page: Page, gateway: GatewayProcess, http: httpx.AsyncClient
) -> None:
    """The demo page with a mix of states renders, saved to test-artifacts/demo.png (and -dark)."""
    await tencent(http, "alice", "Login", "iOS")
    await tencent(http, "alice", "Login", "Web")
    await tencent(http, "bob", "Login", "Android")
    await tencent(http, "bob", "Disconnect", "Android")
    await tencent(http, "erin", "Login", "Mac")
    await page.goto(gateway.url("/"))
    await expect(page.locator("#conn")).to_have_attribute("data-status", "open", timeout=WAIT_MS)
    await expect(page.locator('.friend[data-user="alice"] .detail')).to_have_text(
        "Online on iOS, Web", timeout=WAIT_MS
    )
    await expect(page.locator('.friend[data-user="bob"] .detail')).to_have_text(
        re.compile(r"^Last seen ")
    )
    await expect(page.locator('.friend[data-user="erin"] .detail')).to_have_text("Online on macOS")
    await page.locator("#hook-user").select_option("frank")
    await page.locator('#hook-actions button[data-presence="online"]').click()
    await expect(page.locator('presence-dot[user="frank"]')).to_have_attribute("status", "online")

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "demo.png", full_page=True, animations="disabled")
    await page.emulate_media(color_scheme="dark")
    await page.screenshot(path=ARTIFACTS / "demo-dark.png", full_page=True, animations="disabled")
    assert (ARTIFACTS / "demo.png").stat().st_size > 10_000


# -- Server-Sent Events (SPEC sections 7 and 10) ------------------------------------------

# Installed before any page script: every WebSocket fails as a blocking proxy makes it fail
# (an error and a 1006 close, never open); window.webSocketsTried counts the attempts.
FAILING_WEBSOCKET = """
(() => {
  window.webSocketsTried = 0;
  class FailingWebSocket extends EventTarget {
    static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
    constructor(url) {
      super();
      window.webSocketsTried += 1;
      this.url = String(url); this.readyState = 0; this.protocol = ""; this.extensions = "";
      this.bufferedAmount = 0; this.binaryType = "blob";
      this.onopen = null; this.onmessage = null; this.onerror = null; this.onclose = null;
      setTimeout(() => {
        this.readyState = 3;
        const error = new Event("error");
        this.onerror?.(error); this.dispatchEvent(error);
        const close = new CloseEvent("close", { code: 1006, reason: "", wasClean: false });
        this.onclose?.(close); this.dispatchEvent(close);
      }, 20);
    }
    send() { throw new DOMException("not open", "InvalidStateError"); }
    close() {}
  }
  window.WebSocket = FailingWebSocket;
})();
"""

COUNTING_WEBSOCKET = """
(() => {
  window.webSocketsTried = 0;
  const Real = window.WebSocket;
  window.WebSocket = class extends Real {
    constructor(...args) { super(...args); window.webSocketsTried += 1; }
  };
})();
"""


async def client_transport(page: Page) -> str | None:
    """The transport of the page's PresenceClient right now."""
    kind = await page.evaluate("() => globalThis.presenceTest.client.transport")
    assert kind is None or isinstance(kind, str)
    return kind


async def test_dots_fall_back_to_sse_when_websockets_fail(
    page: Page, gateway: GatewayProcess, http: httpx.AsyncClient
) -> None:
    """With every WebSocket failing, "auto" moves to SSE and a dot turns online within 1 s."""
    await page.add_init_script(FAILING_WEBSOCKET)
    await page.goto(gateway.url("/demo/test-dots.html"))
    bob = page.locator('presence-dot[user="bob"]').first
    await expect(page.locator("#status")).to_have_text("open", timeout=WAIT_MS)
    assert await client_transport(page) == "sse"
    assert await page.evaluate("() => window.webSocketsTried") >= 2
    await expect(bob).to_have_attribute("status", "offline", timeout=WAIT_MS)

    await tencent(http, "bob", "Login", "iOS")
    await expect(bob).to_have_attribute("status", "online", timeout=1_000)
    await expect(bob).to_have_attribute("aria-label", "bob is online")
    dave = page.locator('presence-dot[user="dave"]')  # created after usePresence()
    await tencent(http, "dave", "Login", "Web")
    await expect(dave).to_have_attribute("status", "online", timeout=1_000)
    await tencent(http, "bob", "Disconnect", "iOS")
    await expect(bob).to_have_attribute("status", "offline", timeout=1_000)
    await expect(page.locator("#errors li")).to_have_count(0)


async def test_sse_transport_survives_gateway_restart(
    page: Page, gateway: GatewayProcess, http: httpx.AsyncClient
) -> None:
    """transport "sse": no WebSocket at all; after a gateway kill and restart the page streams
    again, with the restarted gateway's fresh snapshot."""
    await page.add_init_script(COUNTING_WEBSOCKET)
    await page.goto(gateway.url("/demo/test-dots.html?transport=sse"))
    status = page.locator("#status")
    carol = page.locator('presence-dot[user="carol"]')
    await expect(status).to_have_text("open", timeout=WAIT_MS)
    assert await client_transport(page) == "sse"
    await tencent(http, "carol", "Login", "Web")
    await expect(carol).to_have_attribute("status", "online", timeout=WAIT_MS)

    await gateway.kill()
    await expect(status).to_have_text("reconnecting", timeout=WAIT_MS)
    await gateway.start()
    await expect(status).to_have_text("open", timeout=15_000)
    await expect(carol).to_have_attribute("status", "offline", timeout=WAIT_MS)
    await expect(carol).to_have_attribute("aria-label", "carol was never seen")

    await tencent(http, "carol", "Login", "Android")
    await expect(carol).to_have_attribute("status", "online", timeout=WAIT_MS)
    assert await client_transport(page) == "sse"
    assert await page.evaluate("() => window.webSocketsTried") == 0

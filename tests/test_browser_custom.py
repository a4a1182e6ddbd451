"""Headless Chromium: <presence-dot show-custom> shows a custom status set through the API
(SPEC 6, 7). Uses tests/test_browser.py's dev-mode gateway subprocess and Chromium."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page, expect

from gateway.config import dev_settings
from tests.test_browser import (  # noqa: F401  (fixtures, used by name)
    APP,
    WAIT_MS,
    GatewayProcess,
    browser,
    chromium,
    gateway,
    http,
    page,
    tencent,
)

pytestmark = pytest.mark.browser

DEV_API_KEY = dev_settings().apps["demo"].api_key  # what dev mode configures


async def put_custom(http: httpx.AsyncClient, user: str, custom: str | None) -> None:  # noqa: F811
    """PUT the user's custom status through the server API; 200 with the new state."""
    response = await http.put(
        f"/v1/apps/{APP}/users/{user}/custom",
        json={"custom": custom},
        headers={"Authorization": f"Bearer {DEV_API_KEY}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["custom"] == custom


async def test_dot_shows_custom_status_set_through_the_api(
    page: Page,  # noqa: F811
    gateway: GatewayProcess,  # noqa: F811
    http: httpx.AsyncClient,  # noqa: F811
) -> None:
    """A show-custom dot labels "Bob is online: In a meeting" and shows the text as
    ::part(custom); a dot without show-custom has it only in its label; clearing removes it."""
    await page.goto(gateway.url("/demo/test-dots.html"))
    await expect(page.locator("#status")).to_have_text("open", timeout=WAIT_MS)
    await page.evaluate(
        """() => {
          for (const [name, show] of [["Bob", true], ["Bobby", false]]) {
            const dot = document.createElement("presence-dot");
            dot.setAttribute("user", "bob");
            dot.setAttribute("name", name);
            if (show) dot.setAttribute("show-custom", "");
            document.body.append(dot);
          }
        }"""
    )
    shown = page.locator('presence-dot[name="Bob"]')
    plain = page.locator('presence-dot[name="Bobby"]')
    await expect(shown).to_have_attribute("aria-label", "Bob was never seen", timeout=WAIT_MS)

    await tencent(http, "bob", "Login", "iOS")
    await expect(shown).to_have_attribute("aria-label", "Bob is online", timeout=WAIT_MS)
    await put_custom(http, "bob", "In a meeting")
    await expect(shown).to_have_attribute(
        "aria-label", "Bob is online: In a meeting", timeout=WAIT_MS
    )
    part = shown.locator('[part="custom"]')
    await expect(part).to_have_text("In a meeting")
    await expect(part).to_be_visible()
    await expect(plain).to_have_attribute("aria-label", "Bobby is online: In a meeting")
    await expect(plain.locator('[part="custom"]')).to_be_hidden()

    # Text, never markup.
    await put_custom(http, "bob", "<b>busy</b>")
    await expect(part).to_have_text("<b>busy</b>", timeout=WAIT_MS)
    await expect(shown.locator("b")).to_have_count(0)

    await put_custom(http, "bob", None)
    await expect(shown).to_have_attribute("aria-label", "Bob is online", timeout=WAIT_MS)
    await expect(part).to_be_hidden()
    await expect(page.locator("#errors li")).to_have_count(0)

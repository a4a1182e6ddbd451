"""The browser files: package data of ``gateway``; the client under /web/ always, the demo and
test pages (``/`` and ``/demo/``) in dev mode only (SPEC 2, 6, 7).

Nothing is built here: the package-data globs of pyproject.toml are checked against the files
the app serves, and the app is checked to serve them from inside the package.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
from pathlib import Path
from urllib.parse import urljoin

import httpx
import msgspec
import pytest

from gateway import app as app_module
from gateway.config import Settings, dev_settings
from tests.live import serve

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = importlib.resources.files("gateway")
CLIENT = ["presence.js", "connection.js", "watchset.js", "sse.js", "codes.js", "presence-dot.js"]
PAGES = ["index.html", "demo.js", "demo.css", "test-dots.html"]
# What the demo pages load: <link href>, <script src> and ES module imports (not #, data:).
PAGE_REF = re.compile(r"""(?:href=|src=|from\s)["']([./][^"'?#]*)["']""")


def production() -> Settings:
    """Dev mode's app, but started from a config file (no demo)."""
    return msgspec.structs.replace(dev_settings(), dev_mode=False, source="test.toml")


def refs(url: str, text: str) -> set[str]:
    """The paths that the page or module at ``url`` loads, resolved against it."""
    return {urljoin(url, ref) for ref in PAGE_REF.findall(text)}


def package_data() -> set[str]:
    """Paths (relative to gateway/) that pyproject.toml ships as package data."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["gateway"]
    base = ROOT / "gateway"
    return {p.relative_to(base).as_posix() for pat in patterns for p in base.glob(pat)}


def test_client_and_pages_resolve_inside_the_package() -> None:
    """The app serves the client and the demo from gateway/ (package data), not the checkout."""
    web = PACKAGE / "web"
    demo = PACKAGE / "demo"
    assert all((web / name).is_file() for name in [*CLIENT, "presence.d.ts"]), list(web.iterdir())
    assert all((demo / name).is_file() for name in PAGES), list(demo.iterdir())
    assert Path(str(web)) == app_module.WEB_DIR
    assert Path(str(demo)) == app_module.DEMO_DIR


def test_package_data_ships_every_served_file() -> None:
    """Every file under gateway/web/ and gateway/demo/ but tsconfig.json is in the wheel."""
    served = {
        p.relative_to(ROOT / "gateway").as_posix()
        for d in ("web", "demo")
        for p in (ROOT / "gateway" / d).iterdir()
        if p.name != "tsconfig.json"
    }
    assert {f"web/{n}" for n in CLIENT} | {f"demo/{n}" for n in PAGES} <= served
    assert served <= package_data(), served - package_data()


async def test_outside_dev_mode_only_the_client_is_served() -> None:
    """With a config file /web/ serves the client; /, /demo/* and /web/<demo page> are 404."""
    async with serve(production()) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        for name in CLIENT:
            reply = await http.get(f"/web/{name}")
            assert reply.status_code == 200, name
            assert reply.headers["content-type"].startswith("text/javascript"), name
        for path in ["/", *(f"/demo/{n}" for n in PAGES), *(f"/web/{n}" for n in PAGES)]:
            assert (await http.get(path)).status_code == 404, path


@pytest.mark.parametrize("page", ["index.html", "test-dots.html"])
async def test_dev_mode_serves_the_pages_and_everything_they_load(page: str) -> None:
    """In dev mode / is the demo, and every /web/ or /demo/ URL the pages load answers 200."""
    async with serve(dev_settings()) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        start = "/" if page == "index.html" else f"/demo/{page}"
        urls = refs(start, (await http.get(start)).text)
        for url in sorted(u for u in urls if u.endswith(".js")):
            urls |= refs(url, (await http.get(url)).text)
        assert "/web/presence.js" in urls or "/web/presence-dot.js" in urls, urls
        for url in sorted(urls):
            assert (await http.get(url)).status_code == 200, url

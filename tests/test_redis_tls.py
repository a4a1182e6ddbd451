"""The wire layer over TLS against a real TLS redis-server: verified certs, AUTH, the feed.

The server listens on TLS only (``--port 0``), so every round trip here went through TLS. The
throwaway CA and server certificate are made with the ``openssl`` CLI in the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.backends.base import PresenceSettings
from gateway.backends.redis import RedisBroker, RedisStore
from gateway.errors import StoreUnavailable
from gateway.model import PresenceEvent, state_encoder
from tests.servers import RedisServer, free_port, require_binary

pytestmark = pytest.mark.redis

NOW = 1_763_700_000_000
PASSWORD = "tls-pw-not-in-any-log-5e2a"


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        [require_binary("openssl"), *map(str, args)],
        cwd=cwd,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def make_certs(directory: Path, name: str = "ca") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / f"{name}.key", directory / f"{name}.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    days = ("-days", "2")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
             *days, "-subj", f"/CN=presence-test-{name}", cwd=directory)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
             "-subj", "/CN=127.0.0.1", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, *days, "-extfile", ext, cwd=directory)  # fmt: skip
    return ca, cert, key


class TlsRedisServer(RedisServer):
    """A redis-server listening on TLS only, optionally wanting a password."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        super().__init__(directory)
        self.ca, self.cert, self.key = make_certs(directory / "certs")
        self.password = password

    def tls_url(self, *, ca: Path | None = None, password: str | None = None) -> str:
        """A ``rediss://`` URL that verifies the server against ``ca`` (this server's CA)."""
        auth = f":{password}@" if password else ""
        return (
            f"rediss://{auth}127.0.0.1:{self.port}/0"
            f"?ssl_cert_reqs=required&ssl_ca_certs={ca or self.ca}"
        )

    def _argv(self) -> list[str]:
        argv = super()._argv()
        argv[argv.index("--port") + 1] = "0"  # no plain TCP listener at all
        argv += [
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "no",
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log}")
        context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
            ):
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:  # ssl.SSLError included: not listening yet
            return False


def require_tls_build(directory: Path) -> None:
    """Skip unless this redis-server takes the TLS options; fail instead under CI=true."""
    binary = require_binary("redis-server")
    # The config is parsed in order and the first bad directive is named: a TLS build names
    # the probe directive after --tls-port, one without TLS names tls-port. Both exit at once.
    probe = subprocess.run(
        [binary, "--port", "0", "--tls-port", str(free_port()), "--zz-tls-probe", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=directory,
        stdin=subprocess.DEVNULL,
    )
    if "tls-port" in probe.stdout + probe.stderr:
        reason = f"redis-server is built without TLS: {(probe.stdout + probe.stderr)[-300:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)


async def _started(server: TlsRedisServer) -> AsyncIterator[TlsRedisServer]:
    await server.astart()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TlsRedisServer]:
    """A TLS-only redis-server of this test, with a fresh CA."""
    require_tls_build(tmp_path)
    async for server in _started(TlsRedisServer(tmp_path / "redis")):
        yield server


@pytest.fixture
async def tls_auth_server(tmp_path: Path) -> AsyncIterator[TlsRedisServer]:
    """A TLS-only redis-server of this test that wants ``PASSWORD``."""
    require_tls_build(tmp_path)
    async for server in _started(TlsRedisServer(tmp_path / "redis", password=PASSWORD)):
        yield server


def on(user: str, time: int = NOW) -> PresenceEvent:
    return PresenceEvent(user=user, device="d1", platform="ios", online=True, time=time)


def _store(url: str) -> RedisStore:
    return RedisStore.from_url(
        url, cluster=False, settings=PresenceSettings(), prefix=f"t{uuid.uuid4().hex[:12]}"
    )


async def _round_trip(store: RedisStore) -> None:
    result = await store.apply("app", [on("bob"), on("amy")], NOW)
    assert result.applied == 2 and len(result.published) == 2
    [bob, amy, nobody] = await store.get("app", ["bob", "amy", "nobody"])
    assert (bob.status, amy.status, nobody.status) == ("online", "online", "offline")
    assert bob.since == NOW
    assert (await store.records("app", "bob"))["d1"].online


async def test_apply_and_get_over_verified_tls(tls_server: TlsRedisServer) -> None:
    """A rediss:// store with a verified certificate applies, gets and reads records."""
    store = _store(tls_server.tls_url())
    try:
        await _round_trip(store)
        await store.ping()
    finally:
        await store.close()


async def test_reloads_flushed_script_over_tls(tls_server: TlsRedisServer) -> None:
    """NOSCRIPT over TLS: after SCRIPT FLUSH the lane loads the scripts and the apply succeeds."""
    store = _store(tls_server.tls_url())
    try:
        await store.apply("app", [on("bob")], NOW)
        admin = Redis.from_url(tls_server.tls_url())  # out of band: redis-py's own TLS client
        try:
            assert await admin.script_flush()
        finally:
            await admin.aclose()
        result = await store.apply("app", [on("amy")], NOW)
        assert result.applied == 1 and len(result.published) == 1
    finally:
        await store.close()


async def test_untrusted_server_certificate_is_refused(
    tls_server: TlsRedisServer, tmp_path: Path
) -> None:
    """With ssl_cert_reqs=required a certificate of another CA fails as StoreUnavailable."""
    other_ca, _, _ = make_certs(tmp_path / "other", name="other")
    store = _store(tls_server.tls_url(ca=other_ca))
    try:
        with pytest.raises(StoreUnavailable, match=r"(?i)certificate"):
            await store.apply("app", [on("bob")], NOW)
    finally:
        await store.close()


async def test_auth_over_tls(tls_auth_server: TlsRedisServer) -> None:
    """AUTH over TLS: the password in the URL works; a wrong one fails without being shown."""
    store = _store(tls_auth_server.tls_url(password=PASSWORD))
    try:
        await _round_trip(store)
    finally:
        await store.close()
    wrong = "wrong-pw-6b1d"
    for url in (tls_auth_server.tls_url(password=wrong), tls_auth_server.tls_url()):
        store = _store(url)
        try:
            with pytest.raises(StoreUnavailable) as raised:
                await store.apply("app", [on("bob")], NOW)
            assert wrong not in str(raised.value) and PASSWORD not in str(raised.value)
        finally:
            await store.close()


async def test_feed_over_tls_with_auth(tls_auth_server: TlsRedisServer) -> None:
    """The broker's own pub/sub connection speaks TLS and AUTH: a published state arrives."""
    url = tls_auth_server.tls_url(password=PASSWORD)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    broker = RedisBroker(url, cluster=False, prefix=prefix)
    store = RedisStore.from_url(url, cluster=False, settings=PresenceSettings(), prefix=prefix)
    got: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
    broker.set_handlers(lambda app, user, payload: got.put_nowait((app, user, payload)), _no_op)
    try:
        await broker.start()
        await broker.subscribe("app", ["bob"])
        result = await store.apply("app", [on("bob")], NOW)
        async with asyncio.timeout(5):
            app, user, payload = await got.get()
        assert (app, user) == ("app", "bob")
        assert payload == state_encoder.encode(result.published[0])
    finally:
        await broker.close()
        await store.close()


def _no_op() -> None:
    pass

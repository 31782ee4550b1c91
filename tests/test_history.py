"""HistoryStore against a real Redis (see conftest: every test isolated by `key_prefix`)."""

import asyncio
import json
import logging

import pytest

from bot.history import HistoryStore, Turn
from tests.helpers import user_turn


def store(redis_connection, key_prefix, *, max_turns=20, ttl_seconds=60) -> HistoryStore:
    return HistoryStore(
        redis_connection.client, max_turns=max_turns, ttl_seconds=ttl_seconds, key_prefix=key_prefix
    )


async def test_append_and_read_in_order(history):
    await history.append("c1", user_turn("one"), user_turn("two"))
    await history.append(
        "c1", Turn(role="character", author="Goku", content="three", character_id="goku")
    )
    turns = await history.recent("c1")
    assert [t.content for t in turns] == ["one", "two", "three"]
    assert turns[2].character_id == "goku" and turns[2].role == "character"
    assert await history.count("c1") == 3


async def test_key_layout(history, redis_connection, key_prefix):
    await history.append(42, user_turn("hi"))
    assert history.key(42) == f"{key_prefix}:history:42"
    assert await redis_connection.client.llen(f"{key_prefix}:history:42") == 1
    assert await history.count("42") == 1  # int and str channel ids are the same channel


async def test_append_nothing_writes_nothing(history, redis_connection):
    await history.append("c")
    assert not await redis_connection.client.exists(history.key("c"))


async def test_capped_to_newest_turns(redis_connection, key_prefix):
    history = store(redis_connection, key_prefix, max_turns=4)
    for i in range(10):
        await history.append(7, user_turn(str(i)))
    assert [t.content for t in await history.recent(7)] == ["6", "7", "8", "9"]
    assert await redis_connection.client.llen(history.key(7)) == 4
    # One append of more turns than fit keeps the newest of them.
    await history.append(7, *(user_turn(f"b{i}") for i in range(6)))
    assert [t.content for t in await history.recent(7)] == ["b2", "b3", "b4", "b5"]


async def test_limit(redis_connection, key_prefix):
    history = store(redis_connection, key_prefix, max_turns=4)
    for i in range(6):
        await history.append("c", user_turn(str(i)))
    assert [t.content for t in await history.recent("c", limit=2)] == ["4", "5"]
    assert [t.content for t in await history.recent("c", limit=1)] == ["5"]
    assert [t.content for t in await history.recent("c", limit=100)] == ["2", "3", "4", "5"]
    assert await history.recent("c", limit=0) == []
    with pytest.raises(ValueError, match="limit must be"):
        await history.recent("c", limit=-1)


async def test_ttl_set_and_zero_means_no_expiry(redis_connection, key_prefix):
    client = redis_connection.client
    expiring = store(redis_connection, key_prefix, max_turns=5, ttl_seconds=120)
    await expiring.append("c", user_turn("hi"))
    assert 100 < await client.ttl(expiring.key("c")) <= 120
    # ttl 0: no expiry, and an append removes an expiry set earlier (e.g. before a config change).
    forever = store(redis_connection, key_prefix, max_turns=5, ttl_seconds=0)
    await forever.append("c", user_turn("again"))
    assert await client.ttl(forever.key("c")) == -1
    await forever.append("fresh", user_turn("new channel"))
    assert await client.ttl(forever.key("fresh")) == -1


async def test_every_append_refreshes_the_expiry(redis_connection, key_prefix):
    client = redis_connection.client
    history = store(redis_connection, key_prefix, ttl_seconds=300)
    await history.append("c", user_turn("hi"))
    await client.expire(history.key("c"), 5)  # as if the channel had been quiet for a while
    await history.append("c", user_turn("back"))
    assert await client.ttl(history.key("c")) > 250


async def test_clear_returns_count_and_channels_are_isolated(history):
    await history.append("a", user_turn("x"), user_turn("y"))
    await history.append("b", user_turn("z"))
    assert await history.clear("a") == 2
    assert await history.recent("a") == []
    assert await history.count("a") == 0
    assert [t.content for t in await history.recent("b")] == ["z"]
    assert await history.clear("a") == 0


async def test_same_channel_under_another_prefix_is_separate(redis_connection, key_prefix):
    one = store(redis_connection, f"{key_prefix}:one")
    two = store(redis_connection, f"{key_prefix}:two")
    await one.append("c", user_turn("for one"))
    assert await two.recent("c") == []


def test_turn_json_round_trip_with_unicode():
    turn = Turn(role="user", author="Ünï 🐉", content='かめはめ波! 💥\n"quoted"', timestamp=1.5)
    raw = turn.to_json()
    assert "🐉" in raw  # stored as text, not \\u escapes
    assert Turn.from_json(raw) == turn
    character = Turn(role="character", author="Goku", content="Yo!", character_id="goku")
    assert Turn.from_json(character.to_json()) == character


async def test_unicode_survives_redis(history):
    turn = Turn(role="user", author="Ünï 🐉", content="かめはめ波! 💥 👨‍👩‍👧", timestamp=2.0)
    await history.append("u", turn)
    assert await history.recent("u") == [turn]


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "",
        "[1, 2]",
        '"a string"',
        '{"role": "user"}',
        '{"role": "x", "author": "a", "content": "b"}',
        '{"role": "user", "author": null, "content": "b"}',
        '{"role": "user", "author": "a", "content": 3}',
        '{"role": "user", "author": "a", "content": "b", "character_id": 5}',
        '{"role": "user", "author": "a", "content": "b", "timestamp": "noon"}',
    ],
)
def test_malformed_turn_json_is_a_clear_error(raw):
    with pytest.raises(ValueError, match="malformed history turn"):
        Turn.from_json(raw)


def test_missing_optional_fields_are_defaulted():
    turn = Turn.from_json(json.dumps({"role": "user", "author": "a", "content": "b"}))
    assert turn.character_id is None and turn.timestamp == 0.0


async def test_malformed_entries_skipped_with_a_warning(history, redis_connection, caplog):
    await history.append("c", user_turn("good"))
    await redis_connection.client.rpush(history.key("c"), "garbage", '{"role": "boss"}')
    await history.append("c", user_turn("also good"))
    with caplog.at_level(logging.WARNING, logger="bot.history"):
        turns = await history.recent("c")
    assert [t.content for t in turns] == ["good", "also good"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert history.key("c") in warnings[0].getMessage()


async def test_concurrent_appends_all_recorded_in_order_per_task(redis_connection, key_prefix):
    history = store(redis_connection, key_prefix, max_turns=1000)

    async def writer(task: int) -> None:
        for i in range(5):
            await history.append("busy", user_turn(f"{task}:{i}", author=f"t{task}"))

    await asyncio.gather(*(writer(t) for t in range(20)))
    turns = await history.recent("busy")
    assert len(turns) == 100
    for task in range(20):
        mine = [t.content for t in turns if t.author == f"t{task}"]
        assert mine == [f"{task}:{i}" for i in range(5)]


async def test_concurrent_appends_never_exceed_the_cap(redis_connection, key_prefix):
    history = store(redis_connection, key_prefix, max_turns=3)
    await asyncio.gather(
        *(history.append("c", user_turn(f"{t}a"), user_turn(f"{t}b")) for t in range(20))
    )
    turns = await history.recent("c")
    assert await history.count("c") == 3
    # Each append is one transaction, so a pair is never interleaved with another pair.
    assert turns[1].content[:-1] == turns[2].content[:-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_turns": 0, "ttl_seconds": 1}, "max_turns must be an integer of at least 1"),
        ({"max_turns": "5", "ttl_seconds": 1}, "max_turns must be an integer"),
        ({"max_turns": True, "ttl_seconds": 1}, "max_turns must be an integer"),
        ({"max_turns": 1, "ttl_seconds": -1}, "ttl_seconds must be an integer, 0"),
        ({"max_turns": 1, "ttl_seconds": 1.5}, "ttl_seconds must be an integer"),
    ],
)
def test_invalid_arguments(redis_connection, kwargs, message):
    with pytest.raises(ValueError, match=message):
        HistoryStore(redis_connection.client, **kwargs)

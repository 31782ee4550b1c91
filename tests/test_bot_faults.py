"""The bot under faults: Redis stopped or hung, Discord refusing sends and edits, generation
failing mid-stream, spam, DMs. Real Redis servers (private embedded ones where a test stops
them), the real embedded model, Discord's servers faked (FakeDiscord).

Every test checks what the user sees (exactly one reply or one notice) and that memory agrees
with the channel.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import torch

from bot.discord_app.notices import MEMORY_DOWN
from bot.engine import engine as engine_module
from bot.services import open_services
from discord_double.fake import FakeDiscord
from tests.bot_fixtures import BotRunner, last_response, summon


def visible(fake: FakeDiscord, channel_id: int) -> list[str]:
    """What the channel shows now, oldest first (deleted messages gone, edits applied)."""
    return [fake.visible_text(m) for m in fake.channel_messages(channel_id)]


async def history_texts(bot, channel_id) -> list[str]:
    return [t.content for t in await bot.services.history.recent(channel_id)]


async def wait_until(predicate, timeout: float = 30.0) -> None:
    """Poll a condition (a safety bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


# -- Redis down or hung ------------------------------------------------------------------------


@pytest.fixture
async def embedded_runner(bot_config, clean_engine, key_prefix, tmp_path):
    """Bots on a private embedded Redis server, which the test may kill or freeze."""
    config = bot_config.model_copy(
        update={
            "data_dir": tmp_path / "private",
            # The test calls recover() itself: no supervisor racing it.
            "redis": bot_config.redis.model_copy(update={"url": None, "check_interval": 3600}),
        }
    )
    runner = BotRunner(config, clean_engine, key_prefix)
    yield runner
    for started in list(runner.bots):
        server = started.services.redis._server
        if server is not None and server.pid:
            # A test may leave it frozen: thaw it so it can be shut down.
            os.kill(server.pid, signal.SIGCONT)
        await runner.stop(started)


async def test_redis_killed_gives_one_notice_then_recovers(embedded_runner):
    fake = FakeDiscord()
    bot = await embedded_runner.start(fake)
    await summon(fake)
    connection = bot.services.redis
    await asyncio.sleep(1.2)  # appendfsync everysec: the summon is on disk
    os.kill(connection._server.pid, signal.SIGKILL)
    await wait_until(lambda: _dead(connection))

    before = len(fake.channel_messages(fake.channel_id))
    await fake.send_message("are you there?", mentions_bot=True)
    await fake.send_message("hello??", mentions_bot=True)  # same user, same window: no 2nd notice
    await fake.send_message("people chatting among themselves")  # not for us: silence
    notices = fake.channel_messages(fake.channel_id)[before:]
    assert [m["content"] for m in notices] == [MEMORY_DOWN]

    assert await connection.recover()  # what the supervisor does every few seconds
    assert connection.health.restarts == 1
    # The restarted server read the append-only file: Goku is still summoned here.
    assert await bot.services.presence.present(fake.channel_id) == ["goku"]
    await fake.send_message("back again?", author_id=fake.admin_id, mentions_bot=True)
    answer = fake.channel_messages(fake.channel_id)[-1]
    assert answer["username"] == "Goku"
    assert (await history_texts(bot, fake.channel_id))[-1] == answer["content"]


async def _dead(connection) -> bool:
    return not await connection.ping(timeout=0.5)


async def test_redis_hung_notice_status_and_commands_answer(embedded_runner):
    fake = FakeDiscord()
    bot = await embedded_runner.start(fake)
    await summon(fake)
    pid = bot.services.redis._server.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.wait_for(fake.send_message("still with me?", mentions_bot=True), 20)
        assert fake.channel_messages(fake.channel_id)[-1]["content"] == MEMORY_DOWN

        await asyncio.wait_for(fake.slash("status", user_id=fake.admin_id), 20)
        status = last_response(fake)
        assert status["kind"] == "response" and "**Redis**: NOT reachable" in status["content"]

        await asyncio.wait_for(fake.slash("history"), 20)
        assert last_response(fake)["content"] == MEMORY_DOWN
    finally:
        os.kill(pid, signal.SIGCONT)
    await fake.send_message("and now?", author_id=fake.admin_id, mentions_bot=True)
    assert fake.channel_messages(fake.channel_id)[-1]["username"] == "Goku"
    assert bot.services.redis.health.restarts == 0  # a frozen server is waited for, not replaced


# -- spam and busy channels --------------------------------------------------------------------


async def test_spam_gets_one_reply_and_one_notice(runner):
    fake = FakeDiscord()
    bot = await runner.start(fake, user_cooldown_seconds=60)
    await summon(fake)
    for n in range(10):
        await fake.send_message(f"spam {n}", mentions_bot=True)
    posted = fake.channel_messages(fake.channel_id)[1:]
    assert len(posted) == 2
    assert posted[0]["username"] == "Goku"
    assert "catching their breath" in posted[1]["content"]
    # Only the answered message is remembered.
    assert (await history_texts(bot, fake.channel_id))[1:] == ["spam 0", posted[0]["content"]]


async def test_busy_refusal_does_not_use_up_the_cooldown(runner):
    fake = FakeDiscord()
    await runner.start(fake, user_cooldown_seconds=60, channel_queue_limit=1)
    await summon(fake)
    await fake.send_messages_concurrently(
        [
            {"content": "first!", "mentions_bot": True, "author_id": fake.admin_id},
            {"content": "me too", "mentions_bot": True},
        ]
    )
    posted = fake.channel_messages(fake.channel_id)[1:]
    assert sorted(m["username"] or "bot" for m in posted) == ["Goku", "bot"]
    assert any("a lot of people to answer" in m["content"] for m in posted)
    # The member who was refused as "busy" is not cooling down: the next message is answered.
    await fake.send_message("my turn now?", mentions_bot=True)
    assert fake.channel_messages(fake.channel_id)[-1]["username"] == "Goku"


# -- Discord refusing sends and edits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "status", "code"),
    [
        ("webhook_send", 404, 10015),  # webhook deleted: a fresh one
        ("webhook_send", 500, 0),  # Discord's 5xx after discord.py's retries: the bot posts
        ("webhook_send", 403, 50013),  # webhook refused: the bot posts
    ],
)
async def test_send_failure_falls_back_and_memory_matches(bot, fake, operation, status, code):
    await summon(fake)
    fake.fail(operation, status, code)
    await fake.send_message("How strong are you?", mentions_bot=True)
    [_, answer] = fake.channel_messages(fake.channel_id)
    shown = fake.visible_text(answer).removeprefix("**Goku**: ")
    assert (await history_texts(bot, fake.channel_id))[-1] == shown
    state = await bot.services.presence.channel_state(fake.channel_id, answer["id"])
    assert state.replied_to == "goku"  # a reply to it reaches Goku


async def test_webhook_limit_reached_the_bot_posts_itself(runner):
    fake = FakeDiscord()
    bot = await runner.start(fake)
    fake.fail("webhook_create", 400, 30007, "Maximum number of webhooks reached (15)")
    await summon(fake)
    [greeting] = fake.channel_messages(fake.channel_id)
    assert greeting["via"] == "http" and greeting["content"].startswith("**Goku**: ")
    assert await history_texts(bot, fake.channel_id) == [bot.services.registry.get("goku").greeting]


async def test_nothing_posted_nothing_remembered(bot, fake):
    await summon(fake)
    fake.fail("webhook_send", 503, 0, times=5)
    fake.fail("channel_send", 503, 0, times=5)
    await fake.send_message("Anyone?", mentions_bot=True)
    assert len(fake.channel_messages(fake.channel_id)) == 1  # the greeting only
    assert await history_texts(bot, fake.channel_id) == [bot.services.registry.get("goku").greeting]
    assert (await bot.services.presence.channel_state(fake.channel_id)).last_speaker == "goku"


async def test_streamed_message_deleted_mid_stream_final_text_posted_once(runner):
    fake = FakeDiscord()
    bot = await runner.start(fake, streaming=True, stream_interval=0.5)
    await summon(fake)
    fake.fail("webhook_edit", 404, 10008, "Unknown Message", times=100)
    await fake.send_message("Tell me about your training.", mentions_bot=True)
    shown = visible(fake, fake.channel_id)[1:]
    remembered = (await history_texts(bot, fake.channel_id))[-1]
    assert remembered in shown and shown.count(remembered) == 1
    assert not any(text.endswith(" …") for text in shown)


# -- generation failing mid-stream (a GPU running out of memory) ------------------------------


async def test_generation_failure_mid_stream_turns_the_partial_into_the_notice(
    runner,
    monkeypatch,
):
    fake = FakeDiscord()
    bot = await runner.start(fake, streaming=True, stream_interval=0.5)
    await summon(fake)
    put = engine_module._RowStreamer.put
    calls = 0

    def out_of_memory_after_a_few_tokens(self, value):
        nonlocal calls
        calls += 1
        if calls > 6:
            time.sleep(0.3)  # let the event loop show the partial text first
            raise torch.OutOfMemoryError("CUDA out of memory (simulated: no GPU here)")
        put(self, value)

    monkeypatch.setattr(engine_module._RowStreamer, "put", out_of_memory_after_a_few_tokens)
    await fake.send_message("Tell me a long story.", mentions_bot=True)
    shown = visible(fake, fake.channel_id)[1:]
    assert len(shown) == 1 and "lost their train of thought" in shown[0]
    assert not any(text.endswith(" …") for text in visible(fake, fake.channel_id))
    assert len(await history_texts(bot, fake.channel_id)) == 1  # the greeting only


# -- DMs ---------------------------------------------------------------------------------------


async def test_dm_every_message_answered_with_memory_per_dm(bot, fake):
    dm = fake.dm_channel_id
    await fake.send_message("hi there", channel_id=dm)
    [first] = fake.channel_messages(dm)
    assert first["via"] == "http" and first["content"].startswith("**Goku**: ")
    await fake.slash("summon", character="vegeta", channel_id=dm)
    assert "answer everything you write here" in last_response(fake)["content"]
    await fake.send_message("who are you?", channel_id=dm)
    assert fake.channel_messages(dm)[-1]["content"].startswith("**Vegeta**: ")
    texts = await history_texts(bot, dm)
    assert texts[0] == "hi there" and "who are you?" in texts
    assert await history_texts(bot, fake.channel_id) == []  # the server channel is separate


# -- what /history shows -----------------------------------------------------------------------


async def test_history_marks_people_apart_from_characters(bot, fake):
    await summon(fake)
    fake.set_nickname(fake.member_id, "**Goku**")
    await fake.send_message("I am the real Goku", mentions_bot=True)
    await fake.slash("history")
    lines = last_response(fake)["content"].splitlines()[1:]
    assert lines[0].startswith("🎭 **Goku**: ")
    assert lines[1] == "👤 \\*\\*Goku\\*\\*: I am the real Goku"
    assert lines[2].startswith("🎭 **Goku**: ")


# -- two bots on one Redis server --------------------------------------------------------------


async def test_two_bots_sharing_redis_keep_their_keys_apart(bot_config, clean_engine, key_prefix):
    # Both use the same server: REDIS_URL's, or one embedded server in the shared data dir.
    prefixes = [f"{key_prefix}.a", f"{key_prefix}.b"]
    services = []
    try:
        for prefix in prefixes:
            config = bot_config.model_copy(
                update={"redis": bot_config.redis.model_copy(update={"key_prefix": prefix})}
            )
            services.append(await open_services(config, engine=clean_engine))
        first, second = services
        goku = first.registry.get("goku")
        await first.presence.summon(42, "goku")
        await first.chat.greet(42, goku)
        assert await second.presence.present(42) == []
        assert await second.history.recent(42) == []
        client = first.redis.client
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}.*")]
        assert keys and all(k.startswith(f"{prefixes[0]}:") for k in keys)
        await client.delete(*keys)
    finally:
        for opened in services:
            await opened.close()

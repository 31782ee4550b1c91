"""Posting as a character when Discord fails: the speaker's fallback routes and the live reply,
through discord.py's real REST and webhook code against FakeDiscord's injected faults."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import discord
import pytest

from bot.discord_app.speaker import LiveReply, SendFailed
from discord_double.fake import FakeDiscord
from tests.bot_fixtures import pings_nobody

SPEAKER_LOG = "bot.discord_app.speaker"
FINAL = "Hello there! Let's train together, friend."
SECRETS = ("webhook-token-", "fake-token", "interaction-token-")


@pytest.fixture
def goku(bot):
    return bot.services.registry.get("goku")


@pytest.fixture
def channel(bot, fake):
    return bot.get_channel(fake.channel_id)


async def settle(condition: Callable[[], bool], *, turns: int = 1000) -> None:
    """Run the event loop until `condition` holds. The fake answers without real I/O, so a
    bounded number of loop turns is enough; no clock is involved."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def visible(fake: FakeDiscord, channel_id: int) -> list[str]:
    """What the channel shows of the bot's messages now."""
    return [fake.visible_text(m) for m in fake.channel_messages(channel_id)]


def speaker_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == SPEAKER_LOG and r.levelno == logging.WARNING
    ]


def assert_no_secrets(caplog, *errors: BaseException) -> None:
    """No log line or error shows a token (the fake's look like "webhook-token-123")."""
    texts = [r.getMessage() for r in caplog.records] + [str(e) for e in errors]
    assert not any(secret in text for text in texts for secret in SECRETS), texts


def assert_task_ended_cleanly(live: LiveReply) -> None:
    """The streaming task ended without an exception nobody would ever retrieve."""
    task = live._task
    assert task.done() and not task.cancelled() and task.exception() is None


async def streamed(live: LiveReply, fake: FakeDiscord, text: str) -> dict:
    """Feed text as the engine thread would and wait until the partial message shows."""
    await asyncio.to_thread(live.feed, text)

    def partials() -> list[dict]:
        messages = fake.channel_messages(live.channel.id)
        return [m for m in messages if fake.visible_text(m).endswith(" …")]

    await settle(lambda: bool(partials()))
    [message] = partials()
    return message


def live_reply(bot, channel, goku) -> LiveReply:
    return LiveReply(bot.speaker, channel, goku, preview=str.strip, interval=0)


# -- send_one: the fallback chain --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "text"),
    [(404, 10015, "Unknown Webhook"), (401, 50027, "Invalid Webhook Token")],
)
async def test_a_rejected_webhook_is_replaced_once(
    bot, fake, channel, goku, caplog, status, code, text
):
    fake.fail("webhook_send", status, code, text)
    with caplog.at_level(logging.WARNING, logger=SPEAKER_LOG):
        message = await bot.speaker.send_one(channel, goku, "Kamehameha!")
    assert len(fake.webhooks_created()) == 2  # the first was rejected, a fresh one posted
    [posted] = fake.channel_messages(fake.channel_id)
    assert posted["id"] == message.id and posted["via"] == "webhook"
    assert posted["username"] == "Goku" and posted["content"] == "Kamehameha!"
    [warning] = speaker_warnings(caplog)
    assert f"HTTP {status}, code {code}" in warning
    assert_no_secrets(caplog)


async def test_forbidden_webhook_falls_back_to_the_bot_and_is_remembered(
    bot, fake, channel, goku, caplog
):
    fake.fail("webhook_send", 403, 50013, "Missing Permissions")
    with caplog.at_level(logging.WARNING, logger=SPEAKER_LOG):
        await bot.speaker.send_one(channel, goku, "Hi! <@1> @everyone")
        await bot.speaker.send_one(channel, goku, "Still me.")
    first, second = fake.channel_messages(fake.channel_id)
    assert first["via"] == "http" and first["content"] == "**Goku**: Hi! <@1> @everyone"
    assert pings_nobody(first["allowed_mentions"])
    # The refusal is remembered: the second message goes straight to the bot route.
    assert second["via"] == "http" and second["content"] == "**Goku**: Still me."
    assert len(fake.failed_calls) == 1
    [warning] = speaker_warnings(caplog)  # one warning, not one per message
    assert "HTTP 403, code 50013" in warning
    assert_no_secrets(caplog)


async def test_a_webhook_refusal_is_only_remembered_for_a_while(bot, fake, channel, goku):
    bot.speaker.webhook_retry_seconds = 0  # "a while" has passed at once
    fake.fail("webhook_send", 403, 50013, "Missing Permissions")
    await bot.speaker.send_one(channel, goku, "one")
    await bot.speaker.send_one(channel, goku, "two")
    assert [m["via"] for m in fake.channel_messages(fake.channel_id)] == ["http", "webhook"]


async def test_webhook_limit_on_create_falls_back_to_the_bot(bot, fake, channel, goku, caplog):
    fake.fail("webhook_create", 400, 30007, "Maximum number of webhooks reached (15)")
    with caplog.at_level(logging.WARNING, logger=SPEAKER_LOG):
        await bot.speaker.send_one(channel, goku, "one")
        await bot.speaker.send_one(channel, goku, "two")
    assert visible(fake, fake.channel_id) == ["**Goku**: one", "**Goku**: two"]
    assert fake.webhooks_created() == [] and len(fake.failed_calls) == 1  # not retried per message
    [warning] = speaker_warnings(caplog)
    assert "code 30007" in warning


async def test_server_error_on_webhook_falls_back_and_keeps_the_webhook(bot, fake, channel, goku):
    await bot.speaker.send_one(channel, goku, "one")
    fake.fail("webhook_send", 503, 0, "Service Unavailable")
    await bot.speaker.send_one(channel, goku, "two")
    await bot.speaker.send_one(channel, goku, "three")
    sent = fake.channel_messages(fake.channel_id)
    assert [m["via"] for m in sent] == ["webhook", "http", "webhook"]
    assert sent[1]["content"] == "**Goku**: two"
    assert len(fake.webhooks_created()) == 1  # a 5xx is Discord's trouble, not the webhook's


async def test_every_route_failing_raises_send_failed(bot, fake, channel, goku, caplog):
    fake.fail("webhook_send", 502, 0, "Bad Gateway")
    fake.fail("channel_send", 500, 0, "Internal Server Error")
    with pytest.raises(SendFailed) as failed:
        await bot.speaker.send_one(channel, goku, "Anyone?")
    assert failed.value.sent == []
    assert "HTTP 502" in str(failed.value) and "HTTP 500" in str(failed.value)
    assert fake.channel_messages(fake.channel_id) == []
    assert_no_secrets(caplog, failed.value)


async def test_second_part_failing_everywhere_reports_the_first(bot, fake, channel, goku):
    text = "Let's train hard today! " * 100  # 2,400 characters: two messages
    fake.fail("webhook_send", 500, 0, "Internal Server Error", after=1)
    fake.fail("channel_send", 500, 0, "Internal Server Error")
    with pytest.raises(SendFailed) as failed:
        await bot.speaker.send(channel, goku, text)
    [first] = fake.channel_messages(fake.channel_id)
    assert [m.id for m in failed.value.sent] == [first["id"]]
    assert str(failed.value).startswith("Part 2 of 2")


async def test_every_part_fits_even_when_posted_by_the_bot(bot, fake, channel, goku):
    # Webhooks fail from the start, so each part carries the bold-name prefix.
    fake.fail("webhook_create", 403, 50013, "Missing Permissions")
    sent = await bot.speaker.send(channel, goku, "Let's train hard today! " * 250)
    posted = fake.channel_messages(fake.channel_id)
    assert len(sent) == len(posted) == 4
    assert all(m["via"] == "http" and len(m["content"]) <= 2000 for m in posted)


async def test_direct_messages_use_the_bot_route(bot, fake, goku):
    received: list[discord.Message] = []

    async def on_message(message: discord.Message) -> None:
        received.append(message)

    bot.add_listener(on_message)
    await fake.send_message("hi Goku", channel_id=fake.dm_channel_id)
    bot.remove_listener(on_message)
    [message] = received
    assert isinstance(message.channel, discord.DMChannel) and message.guild is None
    [reply] = await bot.speaker.send(message.channel, goku, "Hey! <@1>")
    # The bot can also open the DM itself (POST /users/@me/channels).
    dm = await bot.create_dm(discord.Object(fake.member_id))
    assert dm.id == fake.dm_channel_id
    await bot.speaker.send_one(dm, goku, "Want to spar?")
    posted = {m["id"]: m for m in fake.channel_messages(fake.dm_channel_id)}
    assert (
        posted[reply.id]["via"] == "http" and posted[reply.id]["content"] == "**Goku**: Hey! <@1>"
    )
    assert "**Goku**: Want to spar?" in [m["content"] for m in posted.values()]
    assert fake.webhooks_created() == [] and fake.failed_calls == []


async def test_delete_is_true_when_the_message_is_gone(bot, fake, channel, goku):
    first = await bot.speaker.send_one(channel, goku, "one")
    second = await bot.speaker.send_one(channel, goku, "two")
    assert await bot.speaker.delete(first)
    fake.delete_message(second.id)  # a moderator was faster
    assert await bot.speaker.delete(second)
    assert fake.channel_messages(fake.channel_id) == []
    third = await bot.speaker.send_one(channel, goku, "three")
    fake.fail("message_delete", 500, 0, "Internal Server Error", times=2)
    assert not await bot.speaker.delete(third)
    assert visible(fake, fake.channel_id) == ["three"]


# -- LiveReply: failures while streaming -------------------------------------------------------


async def test_message_deleted_mid_stream_is_posted_afresh(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    partial = await streamed(live, fake, "Hello")
    fake.delete_message(partial["id"])  # someone deletes the half-written reply
    await asyncio.to_thread(live.feed, "Hello there")
    await settle(live._task.done)  # the edit got 404 10008: streaming stops
    sent = await live.finish(FINAL)
    assert visible(fake, fake.channel_id) == [FINAL]
    assert [m.id for m in sent] == [fake.channel_messages(fake.channel_id)[0]["id"]]
    assert_task_ended_cleanly(live)


async def test_unknown_message_for_a_message_that_still_shows(bot, fake, channel, goku):
    # Discord can answer 404 10008 for a message that still shows (e.g. replication lag): the
    # partial is deleted anyway, after the final text went up.
    live = live_reply(bot, channel, goku)
    partial = await streamed(live, fake, "Hello")
    fake.fail("webhook_edit", 404, 10008, "Unknown Message", times=100)
    await asyncio.to_thread(live.feed, "Hello there")
    await settle(live._task.done)
    sent = await live.finish(FINAL)
    assert visible(fake, fake.channel_id) == [FINAL] and sent[0].id != partial["id"]
    cancelled = live_reply(bot, channel, goku)
    await streamed(cancelled, fake, "Again")
    assert not await cancelled.cancel("Goku lost their train of thought.")
    assert visible(fake, fake.channel_id) == [FINAL]  # the caller posts the notice


async def test_edit_failing_mid_stream_stops_streaming_then_finish_edits(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    partial = await streamed(live, fake, "Hello")
    fake.fail("webhook_edit", 503, 0, "Service Unavailable")
    await asyncio.to_thread(live.feed, "Hello there")
    await settle(live._task.done)
    assert len(fake.failed_calls) == 1
    await asyncio.to_thread(live.feed, "Hello there, friend")  # nothing streams any more
    sent = await live.finish(FINAL)
    assert [m.id for m in sent] == [partial["id"]]
    assert visible(fake, fake.channel_id) == [FINAL]
    assert fake.channel_messages(fake.channel_id)[0]["edits"] == [FINAL]
    assert_task_ended_cleanly(live)


async def test_edit_failing_at_finish_posts_afresh_and_removes_the_partial(
    bot, fake, channel, goku
):
    live = live_reply(bot, channel, goku)
    partial = await streamed(live, fake, "Hello")
    fake.fail("webhook_edit", 500, 0, "Internal Server Error")
    sent = await live.finish(FINAL)
    [shown] = fake.channel_messages(fake.channel_id)
    assert fake.visible_text(shown) == FINAL and [m.id for m in sent] == [shown["id"]]
    assert shown["id"] != partial["id"]
    assert [m["id"] for m in fake.channel_messages(include_deleted=True) if m["deleted"]] == [
        partial["id"]
    ]
    assert_task_ended_cleanly(live)


async def test_bot_route_edit_failing_at_finish(runner):
    fake = FakeDiscord(bot_can_manage_webhooks=False)
    bot = await runner.start(fake)
    channel = bot.get_channel(fake.channel_id)
    goku = bot.services.registry.get("goku")
    live = live_reply(bot, channel, goku)
    partial = await streamed(live, fake, "Hello")
    assert partial["via"] == "http" and partial["content"] == "**Goku**: Hello …"
    fake.fail("channel_edit", 502, 0, "Bad Gateway")
    await live.finish(FINAL)
    assert visible(fake, fake.channel_id) == [f"**Goku**: {FINAL}"]
    assert all(pings_nobody(m["allowed_mentions"]) for m in fake.channel_messages())


async def test_deleted_webhook_partial_removed_by_the_bot(runner):
    # The webhook is deleted mid-stream: it can neither edit nor delete its message any more,
    # but a bot with Manage Messages can delete it.
    fake = FakeDiscord(bot_can_manage_messages=True)
    bot = await runner.start(fake)
    channel = bot.get_channel(fake.channel_id)
    live = live_reply(bot, channel, bot.services.registry.get("goku"))
    await streamed(live, fake, "Hello")
    fake.expire_webhooks()
    await live.finish(FINAL)
    assert visible(fake, fake.channel_id) == [FINAL]
    assert len(fake.webhooks_created()) == 2


async def test_first_post_failing_mid_stream_then_finish_posts(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    fake.fail("webhook_send", 500, 0, "Internal Server Error")
    fake.fail("channel_send", 500, 0, "Internal Server Error")
    await asyncio.to_thread(live.feed, "Hello")
    await settle(live._task.done)  # SendFailed while streaming ends only the streaming
    assert fake.channel_messages(fake.channel_id) == []
    sent = await live.finish(FINAL)
    assert visible(fake, fake.channel_id) == [FINAL] and len(sent) == 1
    assert_task_ended_cleanly(live)


async def test_finish_failing_everywhere_raises_and_leaves_no_partial(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    await streamed(live, fake, "Hello")
    fake.fail("webhook_edit", 500, 0, "Internal Server Error")
    fake.fail("webhook_send", 500, 0, "Internal Server Error")
    fake.fail("channel_send", 500, 0, "Internal Server Error")
    with pytest.raises(SendFailed) as failed:
        await live.finish(FINAL)
    assert failed.value.sent == []
    assert visible(fake, fake.channel_id) == []  # the "…" partial is gone too
    assert_task_ended_cleanly(live)


async def test_finish_posts_overflow_after_the_streamed_message(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    partial = await streamed(live, fake, "Hello")
    text = "Let's train hard today! " * 100
    sent = await live.finish(text)
    shown = visible(fake, fake.channel_id)
    assert len(sent) == len(shown) == 2 and sent[0].id == partial["id"]
    assert " ".join(shown) == text.strip()


# -- LiveReply.cancel --------------------------------------------------------------------------


async def test_cancel_with_a_notice_turns_the_partial_into_it(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    await streamed(live, fake, "Hello")
    assert await live.cancel("Goku lost their train of thought.")
    assert visible(fake, fake.channel_id) == ["Goku lost their train of thought."]
    assert_task_ended_cleanly(live)


async def test_cancel_when_the_edit_fails_deletes_the_partial(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    await streamed(live, fake, "Hello")
    fake.fail("webhook_edit", 500, 0, "Internal Server Error")
    assert not await live.cancel("Goku lost their train of thought.")
    assert visible(fake, fake.channel_id) == []
    assert len(fake.channel_messages(fake.channel_id, include_deleted=True)) == 1


async def test_cancel_without_a_notice_or_without_a_partial(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    await streamed(live, fake, "Hello")
    assert not await live.cancel()
    assert visible(fake, fake.channel_id) == []
    nothing_yet = live_reply(bot, channel, goku)
    assert not await nothing_yet.cancel("Goku lost their train of thought.")
    assert fake.channel_messages(fake.channel_id, include_deleted=True)[1:] == []
    assert_task_ended_cleanly(nothing_yet)


async def test_cancel_after_the_partial_was_deleted(bot, fake, channel, goku):
    live = live_reply(bot, channel, goku)
    partial = await streamed(live, fake, "Hello")
    fake.delete_message(partial["id"])
    assert not await live.cancel("Goku lost their train of thought.")  # caller posts a notice
    assert visible(fake, fake.channel_id) == []

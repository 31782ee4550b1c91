"""The Discord bot through discord.py's real dispatch, with Discord's servers faked (FakeDiscord),
real Redis and the real embedded model."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.discord_app.notices import MEMORY_DOWN
from discord_double.fake import FakeDiscord
from finetune.adapters import save_random_adapter
from tests.bot_fixtures import last_response, pings_nobody, summon

# -- /summon, /dismiss, /characters ------------------------------------------------------------


async def test_summon_posts_greeting_as_the_character(bot, fake):
    response = await summon(fake)
    assert response["ephemeral"] and "Goku joins the channel" in response["content"]
    [greeting] = fake.channel_messages(fake.channel_id)
    goku = bot.services.registry.get("goku")
    assert greeting["username"] == "Goku" and greeting["via"] == "webhook"
    assert greeting["content"] == goku.greeting
    assert await bot.services.presence.present(fake.channel_id) == ["goku"]
    [turn] = await bot.services.history.recent(fake.channel_id)
    assert turn.content == goku.greeting and turn.character_id == "goku"


async def test_summon_twice_and_unknown_character(bot, fake):
    await summon(fake)
    assert "Goku is already here" in (await summon(fake, "Kakarot"))["content"]
    unknown = await summon(fake, "gokku")
    assert unknown["ephemeral"]
    assert unknown["content"] == "No character called 'gokku'; did you mean goku?"
    assert len(fake.channel_messages(fake.channel_id)) == 1  # one greeting only


async def test_autocomplete_over_the_registry(bot, fake):
    choices = await fake.autocomplete("summon", "character", "ve")
    assert choices == [{"name": "Vegeta", "value": "vegeta"}]
    assert len(await fake.autocomplete("summon", "character", "")) == 2
    # /dismiss offers only the characters present here.
    assert await fake.autocomplete("dismiss", "character", "") == []
    await summon(fake, "vegeta")
    assert await fake.autocomplete("dismiss", "character", "") == [
        {"name": "Vegeta", "value": "vegeta"}
    ]


async def test_dismiss_absent_then_present_and_characters_list(bot, fake):
    await fake.slash("dismiss", character="vegeta")
    assert last_response(fake)["content"] == "Vegeta isn't in this channel."
    await summon(fake)
    await fake.slash("characters")
    listing = last_response(fake)["content"]
    assert "**Goku** (`goku`) (here)" in listing and "**Vegeta** (`vegeta`):" in listing
    await fake.slash("dismiss")
    assert last_response(fake)["content"] == "Goku left the channel."
    assert await bot.services.presence.present(fake.channel_id) == []


async def test_greeting_with_mentions_never_pings(bot, fake):
    await summon(fake, "vegeta")
    [message] = fake.channel_messages(fake.channel_id)
    assert "@everyone <@&123>" in message["content"]
    assert pings_nobody(message["allowed_mentions"])


# -- chat: mentions, text @name, replies -------------------------------------------------------


async def test_mention_with_nobody_summoned_gives_a_hint(bot, fake):
    await fake.send_message("hello?", mentions_bot=True)
    [hint] = fake.channel_messages(fake.channel_id)
    assert hint["via"] == "http"
    assert hint["content"] == "No character is in this channel yet. Try `/summon goku`."


async def test_plain_chat_is_ignored(bot, fake):
    await fake.send_message("just people talking about goku")
    assert fake.channel_messages(fake.channel_id) == []


async def test_mention_is_answered_and_remembered(bot, fake):
    await summon(fake)
    await fake.send_message("What do you like to eat?", mentions_bot=True)
    _greeting, answer = fake.channel_messages(fake.channel_id)
    assert answer["username"] == "Goku" and answer["content"].strip()
    assert fake.typing_calls >= 1
    turns = await bot.services.history.recent(fake.channel_id)
    assert [t.role for t in turns] == ["character", "user", "character"]
    assert turns[1].content == "What do you like to eat?"
    assert turns[2].content == answer["content"]


@pytest.mark.parametrize("text", ["@goku are you strong?", "goku, are you strong?"])
async def test_name_written_as_text(bot, fake, text):
    await summon(fake)
    await fake.send_message(text)
    assert fake.channel_messages(fake.channel_id)[-1]["username"] == "Goku"
    assert len(fake.channel_messages(fake.channel_id)) == 2


async def test_reply_to_a_character_goes_to_that_character(bot, fake):
    await summon(fake)
    await summon(fake, "vegeta")
    goku_greeting = fake.channel_messages(fake.channel_id)[0]
    await fake.send_message("Hi again!", reply_to=goku_greeting["id"])
    answer = fake.channel_messages(fake.channel_id)[-1]
    assert answer["username"] == "Goku"
    # With a plain mention, the character that spoke last answers.
    await fake.send_message("and you?", mentions_bot=True)
    assert fake.channel_messages(fake.channel_id)[-1]["username"] == "Goku"
    await fake.send_message("Vegeta, your turn", mentions_bot=True)
    assert fake.channel_messages(fake.channel_id)[-1]["username"] == "Vegeta"


async def test_huge_message_is_trimmed_and_answered(bot, fake):
    await summon(fake)
    await fake.send_message("train " * 2000, mentions_bot=True)  # 12,000 characters
    answer = fake.channel_messages(fake.channel_id)[-1]
    assert answer["username"] == "Goku" and answer["content"]


async def test_only_a_mention_is_answered_as_a_greeting(bot, fake):
    await summon(fake)
    await fake.send_message("", mentions_bot=True)
    assert fake.channel_messages(fake.channel_id)[-1]["username"] == "Goku"
    turns = await bot.services.history.recent(fake.channel_id)
    assert turns[-2].content == "Hey Goku!"


async def test_model_output_with_mentions_is_sent_without_pings(bot, fake):
    channel = bot.get_channel(fake.channel_id)
    goku = bot.services.registry.get("goku")
    await bot.speaker.send(channel, goku, "Hey @everyone and <@&42> and <@7>, let's spar!")
    message = fake.channel_messages(fake.channel_id)[-1]
    assert message["content"].startswith("Hey @everyone")
    assert pings_nobody(message["allowed_mentions"])


async def test_long_reply_split_for_discord(bot, fake):
    channel = bot.get_channel(fake.channel_id)
    goku = bot.services.registry.get("goku")
    await bot.speaker.send(channel, goku, "Let's train hard today! " * 200)  # 4,800 characters
    sent = fake.channel_messages(fake.channel_id)
    assert len(sent) == 3 and all(len(m["content"]) <= 2000 for m in sent)


# -- webhooks ----------------------------------------------------------------------------------


async def test_without_manage_webhooks_the_bot_posts_with_a_bold_name(runner):
    fake = FakeDiscord(bot_can_manage_webhooks=False)
    bot = await runner.start(fake)
    await summon(fake)
    [greeting] = fake.channel_messages(fake.channel_id)
    goku = bot.services.registry.get("goku")
    assert greeting["via"] == "http" and greeting["content"] == f"**Goku**: {goku.greeting}"
    assert pings_nobody(greeting["allowed_mentions"])
    assert fake.webhooks_created() == []


async def test_deleted_webhook_is_recreated_once(bot, fake):
    await summon(fake)
    assert len(fake.webhooks_created()) == 1
    fake.expire_webhooks()
    await fake.send_message("still there?", mentions_bot=True)
    assert len(fake.webhooks_created()) == 2
    assert fake.channel_messages(fake.channel_id)[-1]["username"] == "Goku"


async def test_threads_use_the_parent_webhook(bot, fake):
    await summon(fake, channel_id=fake.thread_id)
    [greeting] = fake.channel_messages(fake.thread_id)
    assert greeting["thread_id"] == fake.thread_id and greeting["username"] == "Goku"
    assert await bot.services.presence.present(fake.thread_id) == ["goku"]


async def test_streaming_edits_the_reply_then_shows_the_final_text(runner):
    fake = FakeDiscord()
    bot = await runner.start(fake, streaming=True, stream_interval=0.5)
    await summon(fake)
    await fake.send_message("Tell me about your training.", mentions_bot=True)
    answer = fake.channel_messages(fake.channel_id)[-1]
    final = answer["edits"][-1] if answer["edits"] else answer["content"]
    turns = await bot.services.history.recent(fake.channel_id)
    assert final == turns[-1].content
    assert not final.endswith(" …")


# -- limits ------------------------------------------------------------------------------------


async def test_cooldown_answers_with_a_notice(runner):
    fake = FakeDiscord()
    await runner.start(fake, user_cooldown_seconds=60)
    await summon(fake)
    await fake.send_message("first", mentions_bot=True)
    await fake.send_message("second", mentions_bot=True)
    notice = fake.channel_messages(fake.channel_id)[-1]
    assert notice["via"] == "http" and "catching their breath" in notice["content"]


# -- memory ------------------------------------------------------------------------------------


async def test_history_and_forget_with_confirmation(bot, fake):
    await summon(fake)
    await fake.slash("history")
    shown = last_response(fake)
    assert shown["ephemeral"] and "1 turns remembered" in shown["content"]
    await fake.slash("forget")
    question = last_response(fake)
    assert question["ephemeral"] and question["components"]
    assert await bot.services.history.count(fake.channel_id) == 1  # nothing yet
    await fake.click(question["components"][0]["components"][0]["custom_id"])
    assert "1 turns forgotten" in last_response(fake)["content"]
    assert await bot.services.history.count(fake.channel_id) == 0


# -- admin -------------------------------------------------------------------------------------


async def test_reload_adapter_needs_manage_server(bot, fake):
    await fake.slash("reload-adapter", character="goku", user_id=fake.member_id)
    response = last_response(fake)
    assert response["ephemeral"] and "Manage Server" in response["content"]
    assert bot.services.backend.engine.adapters == {}


async def test_reload_adapter_live_and_broken_adapter_refused(bot, fake, characters_dir):
    engine = bot.services.backend.engine
    adapter = characters_dir / "goku" / "adapter"
    await fake.slash("reload-adapter", character="goku", user_id=fake.admin_id)
    assert "refused" in last_response(fake)["content"]  # no adapter folder yet

    save_random_adapter(engine.model, adapter, seed=3)
    await fake.slash("reload-adapter", character="goku", user_id=fake.admin_id)
    assert "now speaks with the adapter" in last_response(fake)["content"]
    assert engine.adapters == {"goku": adapter}
    await summon(fake)
    await fake.send_message("How strong are you?", mentions_bot=True)
    before = fake.channel_messages(fake.channel_id)[-1]["content"]

    (adapter / "adapter_model.safetensors").write_bytes(b"corrupt")
    await fake.slash("reload-adapter", character="goku", user_id=fake.admin_id)
    refused = last_response(fake)["content"]
    assert "was refused" in refused and "previous adapter keeps serving" in refused
    await fake.slash("dismiss")
    await bot.services.chat.forget(fake.channel_id)
    await summon(fake)  # same conversation state as before the first answer
    await fake.send_message("How strong are you?", mentions_bot=True)
    assert fake.channel_messages(fake.channel_id)[-1]["content"] == before


async def test_status_for_admins(bot, fake):
    await fake.slash("status", user_id=fake.admin_id)
    status = last_response(fake)["content"]
    assert "**Model** (embedded): embedded on cpu" in status and "**Redis**: ok" in status


async def test_redis_errors_in_commands_get_a_clear_notice(bot, fake, caplog):
    # Redis goes away under the bot: point the history at a port where nothing listens.
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    bot.services.history.redis = dead
    with caplog.at_level(logging.WARNING):
        await fake.slash("history")
    response = last_response(fake)
    assert response["ephemeral"] and response["content"] == MEMORY_DOWN
    assert any("Command /history: Redis unavailable" in r.message for r in caplog.records)


# -- restart -----------------------------------------------------------------------------------


async def test_presence_and_history_survive_a_restart(runner, fake, bot):
    await summon(fake)
    await fake.send_message("My name is Alice, remember it!", mentions_bot=True)
    await runner.stop(bot)

    again = await runner.start(fake)
    assert await again.services.presence.present(fake.channel_id) == ["goku"]
    await fake.send_message("What's my name?", mentions_bot=True)
    turns = await again.services.history.recent(fake.channel_id)
    assert len(turns) == 5
    assert turns[1].content == "My name is Alice, remember it!"

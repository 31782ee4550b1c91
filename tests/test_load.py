"""Load: 50 channels x 20 messages through the whole bot (discord.py's real dispatch against
FakeDiscord, real Redis, the real embedded engine with a short generation), on loopback only.

Each round every channel gets one message from its own member, all dispatched at once, so the
batcher sees 50 concurrent replies. Every message must get exactly one reply or one notice, in
its channel, from the channel's character, and every answered turn must be in its history.
The figures (messages/s, latency percentiles, peak queue depth) are printed, not asserted:
`pytest tests/test_load.py -s` shows them.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from discord_double.fake import FakeDiscord
from tests.bot_fixtures import BotRunner
from tests.helpers import write_character

CHANNELS = 50
MESSAGES_PER_CHANNEL = int(os.environ.get("LOAD_ROUNDS", 20))
CAST = ("trunks", "bulma")
# Short cards and prompts, three new tokens: the load is on the bot (Discord events, Redis,
# routing, batching, posting), and 1,000 full-length prompts would take this CPU many minutes.
SHORT_CARD = {"personality": [], "rules": [], "examples": [], "scenario": "", "speech_style": ""}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def test_fifty_channels_twenty_messages_each(
    bot_config,
    characters_dir,
    clean_engine,
    key_prefix,
):
    for character_id in CAST:
        name = character_id.title()
        write_character(characters_dir, id=character_id, name=name, aliases=[], **SHORT_CARD)
    config = bot_config.model_copy(
        update={
            "generation": bot_config.generation.model_copy(update={"max_new_tokens": 3}),
            "prompt": bot_config.prompt.model_copy(update={"token_budget": 128}),
            "history": bot_config.history.model_copy(update={"max_turns": 12}),
            "discord": bot_config.discord.model_copy(update={"channel_queue_limit": 3}),
        }
    )
    runner = BotRunner(config, clean_engine, key_prefix)
    fake = FakeDiscord()
    bot = await runner.start(fake)
    try:
        channels = [fake.add_channel() for _ in range(CHANNELS)]
        members = [fake.new_id() for _ in channels]
        # Half the channels each: messages of one character mostly share a batch (and its card).
        cast = {c: CAST[i * len(CAST) // CHANNELS] for i, c in enumerate(channels)}
        for channel in channels:
            await fake.slash("summon", character=cast[channel], channel_id=channel)

        peak_queue = 0
        sampling = True

        async def sample_queue() -> None:
            nonlocal peak_queue
            while sampling:
                peak_queue = max(peak_queue, bot.services.backend.batcher.queue_depth)
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample_queue())
        latencies: list[float] = []
        outcomes = {"reply": 0, "notice": 0}
        started = time.perf_counter()
        for round_number in range(MESSAGES_PER_CHANNEL):
            before = {c: len(fake.channel_messages(c)) for c in channels}
            sent_at = time.perf_counter()
            ids = await fake.send_messages_concurrently(
                [
                    {
                        "content": f"round {round_number}: how is training going?",
                        "mentions_bot": True,
                        "channel_id": channel,
                        "author_id": member,
                    }
                    for channel, member in zip(channels, members, strict=True)
                ]
            )
            for channel, message_id in zip(channels, ids, strict=True):
                new = fake.channel_messages(channel)[before[channel] :]
                assert len(new) == 1, (round_number, channel, new)  # one reply or one notice
                [posted] = new
                latencies.append(posted["posted_at"] - sent_at)
                if posted["via"] == "webhook":
                    expected = bot.services.registry.get(cast[channel]).name
                    assert posted["username"] == expected
                    outcomes["reply"] += 1
                else:
                    assert int(posted["reference"]) == message_id  # a notice, as a reply
                    outcomes["notice"] += 1
        elapsed = time.perf_counter() - started
        sampling = False
        await sampler

        # Every answered turn is remembered, in its channel, in order (newest max_turns kept).
        for channel in channels:
            shown = [
                fake.visible_text(m)
                for m in fake.channel_messages(channel)
                if m["via"] == "webhook"
            ]
            turns = await bot.services.history.recent(channel)
            remembered = [t.content for t in turns if t.role == "character"]
            assert remembered == shown[-len(remembered) :]
            assert all(t.character_id == cast[channel] for t in turns if t.role == "character")

        total = CHANNELS * MESSAGES_PER_CHANNEL
        assert sum(outcomes.values()) == total
        print(
            f"\nload: {total} messages in {elapsed:.1f} s = {total / elapsed:.1f} messages/s; "
            f"replies {outcomes['reply']}, notices {outcomes['notice']}; latency "
            f"p50 {percentile(latencies, 50):.2f} s, p95 {percentile(latencies, 95):.2f} s, "
            f"p99 {percentile(latencies, 99):.2f} s; peak queue depth {peak_queue}; "
            f"batches {bot.services.backend.batcher.batches_run}"
        )
    finally:
        await runner.stop(bot)

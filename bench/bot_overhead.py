"""Bot-side overhead per message: everything except generation.

A message goes through discord.py's real event dispatch (Discord's servers faked in memory, as
in the tests), routing, Redis reads and writes (real Redis), prompt rendering with the real
tokenizer, post-processing and the webhook send. Generation is replaced by an engine that
answers instantly, so what is timed is the bot's own cost. The baseline, measured in the same
run, is a bare Redis PING round trip.

    .venv/bin/python -m bench.bot_overhead [--messages 1000]   (REDIS_URL to use a server)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bot.config import Config
from bot.discord_app.client import CharacterBot
from bot.engine import GenerationRequest, GenerationResult, InferenceEngine
from bot.engine.loading import load_tokenizer
from bot.services import open_services
from discord_double.fake import FakeDiscord

CANNED = "Oh yeah! I love training. Let's go eat something after, I'm starving! Heh heh."


class InstantEngine(InferenceEngine):
    """The real engine's interface with generation replaced by a fixed answer."""

    def __init__(self, tokenizer) -> None:
        super().__init__(model=None, tokenizer=tokenizer, model_name="instant (bench)")

    def generate(self, requests: Sequence[GenerationRequest], seed: int | None = None):
        return [GenerationResult(CANNED, new_tokens=20, hit_token_limit=False) for _ in requests]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(messages: int, max_wait_ms: float, tokenizer) -> tuple[list[float], list[float]]:
    """Seconds per message through the bot, and Redis PING round trips for the baseline."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            data_dir=Path(tmp),
            redis={"url": os.environ.get("REDIS_URL")},
            discord={"streaming": False, "user_cooldown_seconds": 0},
            batching={"max_wait_ms": max_wait_ms},
        )
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        services = await open_services(config, engine=InstantEngine(tokenizer), key_prefix=prefix)
        bot = CharacterBot(config, services=services)
        fake = FakeDiscord()
        try:
            await fake.login(bot)
            await fake.slash("summon", character="goku")
            for _ in range(50):  # warm-up: fills the history to its cap, warms caches
                await fake.send_message("warm up, Goku!", mentions_bot=True)
            assert await services.history.count(fake.channel_id) == config.history.max_turns
            timings = []
            for i in range(messages):
                start = time.perf_counter()
                await fake.send_message(f"Goku, message {i}: what to train?", mentions_bot=True)
                timings.append(time.perf_counter() - start)
            pings = []
            for _ in range(messages):
                start = time.perf_counter()
                await services.redis.client.ping()
                pings.append(time.perf_counter() - start)
        finally:
            keys = [k async for k in services.redis.client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await services.redis.client.delete(*keys)
            await bot.close()
            await services.close()
    return timings, pings


def summary(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"p50 {percentile(ms, 0.5):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, "
        f"mean {statistics.mean(ms):.2f} ms"
    )


async def run(messages: int) -> None:
    defaults = Config()
    tokenizer = load_tokenizer(defaults)
    print(f"{messages} messages per run, history at its cap of {defaults.history.max_turns} turns")
    # The batcher's collection window is latency spent on purpose (it buys batching under
    # load), so the bot's own cost is measured without it, then with the configured window.
    own, pings = await measure(messages, 0, tokenizer)
    print(f"bot overhead per message (batch window 0 ms): {summary(own)}")
    windowed, _ = await measure(messages, defaults.batching.max_wait_ms, tokenizer)
    print(
        f"with the configured batch window ({defaults.batching.max_wait_ms:g} ms): "
        f"{summary(windowed)}"
    )
    ping_p50 = percentile(pings, 0.5)
    print(f"baseline Redis PING round trip: p50 {ping_p50 * 1000:.3f} ms")
    print(f"ratio bot overhead p50 / PING p50: {percentile(own, 0.5) / ping_p50:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    asyncio.run(run(parser.parse_args().messages))


if __name__ == "__main__":
    main()

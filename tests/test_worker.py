"""Worker mode with real processes: `python -m bot worker` subprocesses with the real embedded
model, a private real Redis server (restarted in one test, so never the shared one), and the
bot's side (`WorkerBackend`, and the Discord bot through the Discord double).

Two workers are started once for the module (about half a minute of model loading); the test
that kills one comes last.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.worker_processes import (
    CAST,
    RedisServer,
    WorkerProcess,
    cast_requests,
    wait_for_workers,
    write_worker_config,
)
from bot.characters import CharacterRegistry
from bot.config import PROJECT_ROOT, Config
from bot.discord_app.client import CharacterBot
from bot.generation import BackendUnavailable, SamplingSettings
from bot.generation.jobs import GROUP, Heartbeat, JobKeys, read_heartbeats
from bot.generation.worker_client import NO_WORKER, WorkerBackend
from bot.redis_connection import RedisConnection, connect_redis
from bot.services import open_services
from tests.bot_fixtures import summon
from tests.helpers import make_config

STARTUP_SECONDS = 240  # two workers loading the model at once on two cores
WORKER_SETTINGS = {
    "claim_idle_seconds": 2.0,  # a dead worker's job is taken over quickly
    "heartbeat_interval": 0.5,
    "heartbeat_timeout": 5.0,
    "job_timeout": 120.0,  # the tests below shorten it where it is the subject
}


async def eventually(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll an async `condition` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await condition()
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


@dataclass
class WorkerEnv:
    server: RedisServer
    prefix: str
    workers: dict[str, WorkerProcess]
    redis: RedisConnection
    characters: dict[str, Path]  # worker name -> its characters folder

    @property
    def keys(self) -> JobKeys:
        return JobKeys(self.prefix)

    def config(self, **worker_settings) -> Config:
        """The bot side's config: worker mode, greedy, this env's Redis namespace."""
        return make_config(
            generation={"max_new_tokens": 8, "temperature": 0, "seed": 0},
            redis={"key_prefix": self.prefix},
            backend={"mode": "worker", "worker": WORKER_SETTINGS | worker_settings},
        )

    def backend(self, tokenizer, **worker_settings) -> WorkerBackend:
        return WorkerBackend(self.config(**worker_settings), self.redis, self.prefix, tokenizer)

    async def beats(self) -> dict[str, Heartbeat]:
        return await read_heartbeats(self.redis.client, self.keys)

    async def wait_alive(self, *names: str) -> None:
        await wait_for_workers(self.redis.client, self.keys, list(names), STARTUP_SECONDS)

    async def batches(self) -> int:
        await asyncio.sleep(1.0)  # two heartbeats: the counters are current
        return sum(b.batches for b in (await self.beats()).values())

    async def nothing_pending(self) -> bool:
        pending = await self.redis.client.xpending(self.keys.jobs, GROUP)
        return pending["pending"] == 0 and await self.redis.client.xlen(self.keys.jobs) == 0


@pytest.fixture(scope="module")
async def worker_env(tmp_path_factory, engine):  # `engine`: the model cache exists first
    root = tmp_path_factory.mktemp("workers")
    server = RedisServer(root)
    server.start()
    prefix = f"charbot-test-{uuid.uuid4().hex}"
    # w2 serves from its own copy of the characters, so one test can break its adapter only.
    characters = {"w1": PROJECT_ROOT / "characters", "w2": root / "characters-w2"}
    shutil.copytree(PROJECT_ROOT / "characters", characters["w2"])
    workers = {
        name: WorkerProcess(
            name,
            write_worker_config(root / f"{name}.yaml", prefix, folder, WORKER_SETTINGS),
            server.url,
            root,
        )
        for name, folder in characters.items()
    }
    for worker in workers.values():
        worker.start()
    redis = await connect_redis(server.url, root)
    env = WorkerEnv(server, prefix, workers, redis, characters)
    try:
        await env.wait_alive(*workers)
        yield env
    finally:
        for worker in workers.values():
            worker.stop()
        await redis.close()
        server.stop()


# -- tests --------------------------------------------------------------------------------------


async def test_concurrent_jobs_are_batched_and_answered_by_the_right_adapter(
    worker_env, clean_engine, tokenizer
):
    settings = SamplingSettings(max_new_tokens=6, temperature=0, top_p=1.0, repetition_penalty=1.0)
    requests = cast_requests(tokenizer, settings, 20)
    backend = worker_env.backend(tokenizer)
    before = await worker_env.batches()
    results = await asyncio.gather(*(backend.generate(r) for r in requests))
    batches = await worker_env.batches() - before

    # The same requests in this process, with the same adapters: the same greedy text.
    registry = CharacterRegistry.load(PROJECT_ROOT / "characters")
    for character_id in CAST:
        clean_engine.load_adapter(character_id, registry.get(character_id).adapter_path)
    expected = [r.text for r in clean_engine.generate(requests)]
    assert [r.text for r in results] == expected
    assert len(set(expected)) > len(CAST)  # the adapters and questions really differ
    assert 2 <= batches <= 10  # 20 jobs on two workers, several per batch
    assert await worker_env.nothing_pending()


async def test_no_worker_or_no_taker_gets_a_notice_and_the_job_is_withdrawn(worker_env, tokenizer):
    settings = SamplingSettings(max_new_tokens=4, temperature=0, top_p=1.0, repetition_penalty=1.0)
    [request] = cast_requests(tokenizer, settings, 1)

    # No worker at all (another namespace): the notice comes at once, nothing is queued.
    lonely = WorkerBackend(worker_env.config(), worker_env.redis, "nobody-here", tokenizer)
    with pytest.raises(BackendUnavailable) as info:
        await lonely.generate(request)
    assert str(info.value) == NO_WORKER

    # Workers alive but stuck (paused): the notice comes after job_timeout, the job is taken
    # off the queue, and when the workers wake up nobody answers it.
    backend = worker_env.backend(tokenizer, job_timeout=1.5, heartbeat_timeout=30.0)
    before = await worker_env.batches()
    for worker in worker_env.workers.values():
        worker.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="nobody took this message within 2 s"):
            await backend.generate(request)
        assert time.monotonic() - started < 4
        assert await worker_env.redis.client.xlen(worker_env.keys.jobs) == 0
    finally:
        for worker in worker_env.workers.values():
            worker.signal(signal.SIGCONT)
    await eventually(worker_env.nothing_pending, 10, "the expired job dropped")
    assert await worker_env.batches() == before  # it was never generated


async def test_both_sides_reconnect_after_a_redis_restart(worker_env, tokenizer):
    settings = SamplingSettings(max_new_tokens=4, temperature=0, top_p=1.0, repetition_penalty=1.0)
    [request] = cast_requests(tokenizer, settings, 1)
    backend = worker_env.backend(tokenizer, job_timeout=30.0)
    worker_env.server.stop()
    await asyncio.sleep(1.5)  # both sides see the connection fail while idle
    worker_env.server.start()  # empty: no persistence, the consumer group is gone too
    await worker_env.wait_alive(*worker_env.workers)  # heartbeats come back unaided
    result = await asyncio.wait_for(backend.generate(request), 60)
    assert result.new_tokens > 0
    assert await worker_env.nothing_pending()


async def test_reload_reaches_every_worker_and_a_refusal_keeps_the_old_adapter(
    worker_env, tokenizer
):
    weights = worker_env.characters["w2"] / "goku" / "adapter" / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"not safetensors")  # w2's copy of Goku's adapter breaks
    try:
        backend = worker_env.backend(tokenizer)
        outcomes = await backend.reload_adapter("goku")
        assert [(o.where, o.ok) for o in outcomes] == [("w1", True), ("w2", False)]
        assert "previous adapter keeps serving" in outcomes[1].detail
        settings = SamplingSettings(
            max_new_tokens=4, temperature=0, top_p=1.0, repetition_penalty=1.0
        )
        requests = [r for r in cast_requests(tokenizer, settings, 16) if r.adapter == "goku"]
        results = await asyncio.gather(*(backend.generate(r) for r in requests))
        assert all(r.new_tokens > 0 for r in results)
        beats = await worker_env.beats()
        assert beats["w1"].adapters["goku"] == beats["w2"].adapters["goku"]  # same version kept
        status = await backend.status()
        assert [w.name for w in status.workers] == ["w1", "w2"] and status.problem is None
    finally:
        weights.write_bytes(good)


async def test_a_killed_worker_s_job_is_taken_over_and_the_reply_shown_once(
    worker_env, fake, tmp_path
):
    config = worker_env.config(job_timeout=30.0)
    config = config.model_copy(
        update={
            "data_dir": tmp_path / "data",
            "generation": config.generation.model_copy(update={"max_new_tokens": 40}),
            "discord": config.discord.model_copy(
                update={"streaming": True, "stream_interval": 0.5, "user_cooldown_seconds": 0.0}
            ),
        }
    )
    services = await open_services_at(config, worker_env)
    bot = CharacterBot(config, services=services)
    await fake.login(bot)
    try:
        await fake.slash("status", user_id=fake.admin_id)
        status = fake.interaction_responses()[-1]["content"]
        assert "**Model** (worker): embedded on cpu" in status
        assert "**Worker** w1: embedded on cpu, 4 adapters" in status and "**Worker** w2" in status
        await summon(fake, "goku")
        channel = fake.channel_id
        greeting = len(fake.channel_messages(channel))
        sending = asyncio.create_task(
            fake.send_message("Tell me all about your training!", mentions_bot=True)
        )

        async def victim():
            # A partial reply shows, and a worker holds the job: that worker dies now.
            if len(fake.channel_messages(channel)) <= greeting:
                return None
            busy = [n for n, b in (await worker_env.beats()).items() if b.queue]
            return busy[0] if busy else None

        name = await eventually(victim, 60, "a partial reply from a busy worker", interval=0.05)
        worker_env.workers[name].kill()
        await asyncio.wait_for(sending, 90)

        replies = fake.channel_messages(channel)[greeting:]
        assert len(replies) == 1  # corrected in place, not posted twice
        shown = fake.visible_text(replies[0])
        remembered = await services.chat.remembered(channel)
        assert remembered[-1].role == "character" and remembered[-1].content == shown
        assert shown and not shown.endswith("…")
        assert await worker_env.nothing_pending()
    finally:
        await bot.close()
        await services.close()


async def open_services_at(config: Config, env: WorkerEnv):
    """open_services against the env's private Redis (its URL as REDIS_URL would give it)."""
    from pydantic import SecretStr

    config = config.model_copy(
        update={"redis": config.redis.model_copy(update={"url": SecretStr(env.server.url)})}
    )
    return await open_services(config, key_prefix=env.prefix)

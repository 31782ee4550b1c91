"""Wiring: build every service once from the config, and close them in the right order."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bot.characters import Character, CharacterRegistry, adapter_dir
from bot.chat import ChatService
from bot.config import EMBEDDED_MODEL, Config
from bot.engine import AdapterError, Batcher, InferenceEngine
from bot.history import HistoryStore
from bot.presence import PresenceStore
from bot.redis_connection import RedisConnection, connect_redis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    """What /status shows, gathered without waiting on anything that may hang."""

    model: str
    device: str
    quantization: str
    adapters: list[str]  # characters with an adapter loaded
    adapter_failures: dict[str, str]  # character id -> why its adapter was refused
    characters: int
    queue_depth: int
    batches_run: int
    redis_ok: bool
    redis_description: str
    redis_error: str | None
    redis_restarts: int


@dataclass
class Services:
    config: Config
    registry: CharacterRegistry
    redis: RedisConnection
    history: HistoryStore
    engine: InferenceEngine
    batcher: Batcher
    chat: ChatService
    presence: PresenceStore

    async def reload_adapter(self, character: Character) -> Path:
        """Load the character's adapter folder anew, between batches; AdapterError keeps the old."""
        path = adapter_dir(self.config.characters_path, character.id)
        await self.batcher.run(self.engine.load_adapter, character.id, path)
        return path

    async def status(self, redis_timeout: float = 0.5) -> ServiceStatus:
        """A snapshot for /status; Redis gets `redis_timeout` seconds to answer a PING, so a hung
        server cannot make the command miss Discord's 3-second deadline."""
        redis_ok = await self.redis.ping(timeout=redis_timeout)
        health = self.redis.health
        return ServiceStatus(
            model=self.engine.model_name,
            device=str(self.engine.device),
            quantization=self.engine.quantization,
            adapters=sorted(self.engine.adapters),
            adapter_failures=dict(self.engine.adapter_failures),
            characters=len(self.registry),
            queue_depth=self.batcher.queue_depth,
            batches_run=self.batcher.batches_run,
            redis_ok=redis_ok,
            redis_description=self.redis.description,
            redis_error=None if redis_ok else health.error,
            redis_restarts=health.restarts,
        )

    async def close(self) -> None:
        await self.batcher.close()  # finish the running batch before Redis goes away
        await self.redis.close()


def load_adapters(engine: InferenceEngine, registry: CharacterRegistry) -> list[str]:
    """Load every character's adapter; a broken one is logged and the character runs on the base."""
    loaded = []
    for character in registry:
        if character.adapter_path is None:
            continue
        try:
            engine.load_adapter(character.id, character.adapter_path)
            loaded.append(character.id)
        except AdapterError as exc:
            log.error(
                "Adapter of %s not loaded, answering with the base model: %s", character.id, exc
            )
    return loaded


async def open_services(
    config: Config, engine: InferenceEngine | None = None, *, key_prefix: str | None = None
) -> Services:
    """Connect Redis, load characters and the engine (unless given), start the batcher.

    `key_prefix` (default: `redis.key_prefix` of the config) namespaces every Redis key, so
    several bots (or tests) can share one server.
    """
    key_prefix = key_prefix or config.redis.key_prefix
    if config.model.base == EMBEDDED_MODEL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded model never needs the hub
    registry = CharacterRegistry.load(config.characters_path)
    registry.get(config.default_character)  # fail early on a typo in default_character
    redis = await connect_redis(config.redis_url, config.data_path)
    redis.start_supervisor(config.redis.check_interval)  # restarts a dead embedded server
    try:
        if engine is None:
            engine = InferenceEngine.from_config(config)
            load_adapters(engine, registry)
        # before the batcher starts: a failure here leaves only Redis to close
        retriever = None
        if config.prompt.examples == "retrieved":
            from bot.embeddings import load_encoder
            from bot.example_retrieval import ExampleRetriever

            retriever = ExampleRetriever(load_encoder(), config.characters_path)
        history = HistoryStore(
            redis.client,
            max_turns=config.history.max_turns,
            ttl_seconds=config.history.ttl_seconds,
            key_prefix=key_prefix,
        )
        batcher = Batcher(
            engine,
            max_batch_size=config.batching.max_batch_size,
            max_wait_ms=config.batching.max_wait_ms,
        )
        await batcher.start()
    except BaseException:
        await redis.close()
        raise
    chat = ChatService(
        config=config,
        registry=registry,
        history=history,
        batcher=batcher,
        tokenizer=engine.tokenizer,
        retriever=retriever,
    )
    presence = PresenceStore(redis.client, key_prefix=key_prefix)
    return Services(config, registry, redis, history, engine, batcher, chat, presence)

"""Wiring: build every service once from the config, and close them in the right order."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bot.characters import ADAPTER_DIR, Character, CharacterRegistry
from bot.chat import ChatService
from bot.config import EMBEDDED_MODEL, Config
from bot.engine import AdapterError, Batcher, InferenceEngine
from bot.history import HistoryStore
from bot.presence import PresenceStore
from bot.redis_connection import RedisConnection, connect_redis

log = logging.getLogger(__name__)


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
        path = self.config.characters_path / character.id / ADAPTER_DIR
        await self.batcher.run(self.engine.load_adapter, character.id, path)
        return path

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
    config: Config, engine: InferenceEngine | None = None, *, key_prefix: str = "charbot"
) -> Services:
    """Connect Redis, load characters and the engine (unless given), start the batcher.

    `key_prefix` namespaces every Redis key, so several bots (or tests) can share one server.
    """
    if config.model.base == EMBEDDED_MODEL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded model never needs the hub
    registry = CharacterRegistry.load(config.characters_path)
    registry.get(config.default_character)  # fail early on a typo in default_character
    redis = await connect_redis(config.redis_url, config.data_path)
    try:
        if engine is None:
            engine = InferenceEngine.from_config(config)
            load_adapters(engine, registry)
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
    retriever = None
    if config.prompt.examples == "retrieved":
        from bot.embeddings import load_encoder
        from bot.example_retrieval import ExampleRetriever

        retriever = ExampleRetriever(load_encoder(), config.characters_path)
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

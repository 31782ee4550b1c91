"""Wiring: build every service once from the config, and close them in the right order."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.characters import Character, CharacterRegistry
from bot.chat import ChatService
from bot.config import EMBEDDED_MODEL, Config
from bot.context import PromptAssembler
from bot.feedback import FeedbackService
from bot.generation import BackendStatus, GenerationBackend, ReloadOutcome
from bot.history import HistoryStore
from bot.preferences import PreferenceStore
from bot.presence import PresenceStore
from bot.redis_connection import RedisConnection, connect_redis

if TYPE_CHECKING:
    from bot.engine import InferenceEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    """What /status shows, gathered without waiting on anything that may hang."""

    backend: BackendStatus
    characters: int
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
    backend: GenerationBackend
    chat: ChatService
    presence: PresenceStore
    preferences: PreferenceStore  # votes and kept answers, for fine-tuning
    feedback: FeedbackService  # "another answer" and votes on replies

    async def reload_adapter(self, character: Character) -> list[ReloadOutcome]:
        """Load the character's adapter anew wherever the model runs; a refusal keeps the old."""
        return await self.backend.reload_adapter(character.id)

    async def status(self, redis_timeout: float = 0.5) -> ServiceStatus:
        """A snapshot for /status; Redis gets `redis_timeout` seconds to answer a PING, so a hung
        server cannot make the command miss Discord's 3-second deadline."""
        redis_ok = await self.redis.ping(timeout=redis_timeout)
        health = self.redis.health
        return ServiceStatus(
            backend=await self.backend.status(),
            characters=len(self.registry),
            redis_ok=redis_ok,
            redis_description=self.redis.description,
            redis_error=None if redis_ok else health.error,
            redis_restarts=health.restarts,
        )

    async def close(self) -> None:
        await self.backend.close()  # finish what is running before Redis goes away
        await self.redis.close()


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
        # Before anything starts: a failure here leaves only Redis to close.
        history = HistoryStore(
            redis.client,
            max_turns=config.history.max_turns,
            ttl_seconds=config.history.ttl_seconds,
            key_prefix=key_prefix,
        )
        backend = await open_backend(config, registry, redis, key_prefix, engine=engine)
    except BaseException:
        await redis.close()
        raise
    chat = ChatService(
        config=config,
        registry=registry,
        history=history,
        backend=backend,
        assembler=PromptAssembler.from_config(backend.tokenizer, config, registry),
    )
    presence = PresenceStore(redis.client, key_prefix=key_prefix)
    preferences = PreferenceStore(redis.client, key_prefix=key_prefix)
    feedback = FeedbackService(
        redis=redis.client,
        registry=registry,
        history=history,
        responder=chat.responder,
        preferences=preferences,
        characters_dir=config.characters_path,
        key_prefix=key_prefix,
    )
    return Services(
        config, registry, redis, history, backend, chat, presence, preferences, feedback
    )


async def open_backend(
    config: Config,
    registry: CharacterRegistry,
    redis: RedisConnection,
    key_prefix: str,
    *,
    engine: InferenceEngine | None = None,
) -> GenerationBackend:
    """The backend `backend.mode` names; `engine` (embedded mode) serves instead of loading one."""
    mode = config.backend.mode
    if mode == "embedded":
        from bot.engine import Batcher, InferenceEngine
        from bot.generation.embedded import EmbeddedBackend, load_adapters

        if engine is None:
            engine = InferenceEngine.from_config(config)
            load_adapters(engine, registry)
        batcher = Batcher(
            engine,
            max_batch_size=config.batching.max_batch_size,
            max_wait_ms=config.batching.max_wait_ms,
        )
        await batcher.start()
        return EmbeddedBackend(engine, batcher, config.characters_path)
    if engine is not None:
        raise ValueError(f"an engine was given, but backend.mode is {mode}")
    from bot.tokenizer import load_tokenizer  # the prompt budget needs it; no weights

    tokenizer = load_tokenizer(config)
    if mode == "worker":
        from bot.generation.worker_client import WorkerBackend

        return WorkerBackend(config, redis, key_prefix, tokenizer)
    from bot.generation.openai_backend import OpenAIBackend

    return OpenAIBackend(config, tokenizer)

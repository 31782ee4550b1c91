"""The embedded backend: the engine and its batcher in this process (the zero-setup default)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bot.characters import CharacterRegistry, adapter_dir
from bot.engine import AdapterError, Batcher, InferenceEngine
from bot.generation.backend import BackendStatus, ReloadOutcome
from bot.generation.request import GenerationRequest, GenerationResult, ScoreRequest, TextScore

HERE = "this process"
log = logging.getLogger(__name__)


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


def refusal(error: Exception, had_adapter: bool) -> str:
    """Why an adapter was refused, and what serves the character instead."""
    kept = (
        "the previous adapter keeps serving"
        if had_adapter
        else "the character keeps answering with the base model"
    )
    return f"{error}; {kept}"


async def reload_into(
    engine: InferenceEngine, batcher: Batcher, characters_dir: Path, character_id: str
) -> tuple[bool, str]:
    """Load the character's adapter folder anew, between batches (no reply is cut in half):
    (True, the folder loaded) or (False, why it was refused and what keeps serving)."""
    path = adapter_dir(characters_dir, character_id)
    had = character_id in engine.adapters
    try:
        await batcher.run(engine.load_adapter, character_id, path)
    except AdapterError as exc:
        return False, refusal(exc, had)
    return True, f"{path.parent.name}/{path.name}/"


class EmbeddedBackend:
    mode = "embedded"

    def __init__(self, engine: InferenceEngine, batcher: Batcher, characters_dir: Path) -> None:
        self.engine = engine
        self.batcher = batcher
        self.characters_dir = characters_dir

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await self.batcher.submit(request)

    async def score(self, requests: list[ScoreRequest]) -> list[TextScore]:
        # On the engine thread, between batches, like everything that runs the model.
        return await self.batcher.run(self.engine.score, requests)

    async def reload_adapter(self, character_id: str) -> list[ReloadOutcome]:
        ok, detail = await reload_into(self.engine, self.batcher, self.characters_dir, character_id)
        return [ReloadOutcome(HERE, ok, detail)]

    async def status(self) -> BackendStatus:
        return BackendStatus(
            mode=self.mode,
            model=self.engine.model_name,
            device=str(self.engine.device),
            quantization=self.engine.quantization,
            adapters=sorted(self.engine.adapters),
            adapter_failures=dict(self.engine.adapter_failures),
            queue_depth=self.batcher.queue_depth,
            batches_run=self.batcher.batches_run,
        )

    async def close(self) -> None:
        await self.batcher.close()  # finish the running batch, refuse the rest

"""`python -m finetune samples ID MESSAGE...`: sampled answers before and after the serving levers.

Before: what the bot posted without them (card + adapter, one sample, no guards, no guidance).
After: the bot's reply as `config.yaml` configures it (rule guards, `generation.candidates`,
`generation.persona_guidance`). Both sample with the config's temperature, seeds 0..n-1, in a
fresh channel, through the bot's own Responder, so what is printed is what a user would see.

With `--after-adapter DIR` the two set-ups are two adapters instead (the character's own, then
DIR, e.g. its DPO adapter), both without the levers: what the training changed by itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bot.characters import Character, CharacterRegistry
from bot.config import Config, GenerationConfig
from bot.context import PromptAssembler
from bot.engine import Batcher, InferenceEngine
from bot.generation.embedded import EmbeddedBackend
from bot.history import Turn
from bot.responder import Responder


@dataclass(frozen=True)
class Sample:
    message: str
    setup: str  # "before" | "after"
    seed: int
    text: str
    seconds: float
    guard_action: str


@dataclass(frozen=True)
class Setup:
    generation: GenerationConfig
    guards: bool
    adapter: Path | None = None  # None: the character's own, as loaded


def before_and_after(config: Config) -> dict[str, Setup]:
    """Without the levers (card + adapter, one sample, no guards), then as configured."""
    before = config.generation.model_copy(update={"candidates": 1, "persona_guidance": 1.0})
    return {"before": Setup(before, False), "after": Setup(config.generation, True)}


def adapter_setups(config: Config, character: Character, after: Path) -> dict[str, Setup]:
    """The character's own adapter, then `after`; both without the levers."""
    before = before_and_after(config)["before"]
    return {
        "before": replace(before, adapter=character.adapter_path),
        "after": replace(before, adapter=after),
    }


def sample_answers(
    config: Config,
    registry: CharacterRegistry,
    character: Character,
    messages: list[str],
    n: int,
    after_adapter: Path | None = None,
) -> list[Sample]:
    engine = InferenceEngine.from_config(config)
    for member in registry:
        if member.adapter_path is not None:
            engine.load_adapter(member.id, member.adapter_path)
    if after_adapter is None:
        setups = before_and_after(config)
    else:
        setups = adapter_setups(config, character, after_adapter)
    return asyncio.run(_sample(engine, config, registry, character, messages, n, setups))


async def _sample(
    engine: InferenceEngine,
    config: Config,
    registry: CharacterRegistry,
    character: Character,
    messages: list[str],
    n: int,
    setups: dict[str, Setup],
) -> list[Sample]:
    batching = config.batching
    batcher = Batcher(
        engine, max_batch_size=batching.max_batch_size, max_wait_ms=batching.max_wait_ms
    )
    backend = EmbeddedBackend(engine, batcher, config.characters_path)
    assembler = PromptAssembler.from_config(engine.tokenizer, config, [character])  # as served
    samples = []
    try:
        for setup, chosen in setups.items():
            if chosen.adapter is not None:
                engine.load_adapter(character.id, chosen.adapter)
            responder = Responder(
                generation=chosen.generation, cast=registry, backend=backend, guards=chosen.guards
            )
            for text in messages:
                message = Turn("user", "User", text, character.id)
                prompt = assembler.build(character, [], message)
                for seed in range(n):
                    engine.seed = seed
                    start = time.perf_counter()
                    reply = await responder.respond(character, prompt, message, [])
                    seconds = time.perf_counter() - start
                    samples.append(
                        Sample(text, setup, seed, reply.text, seconds, reply.guard_action)
                    )
    finally:
        await batcher.close()
    return samples

"""The serving levers as evaluation set-ups: the card with its examples, through the character's
adapter, answered by the bot's own `Responder` (rule guards, candidates, persona guidance).

    card_adapter_guards  greedy, rule guards (a breaking reply is resampled once, then the
                         rule's example answer or a fallback line is given)
    levers_candidates    + 4 sampled candidates (temperature from the config), the persona
                         score picks the guard-passing winner
    levers_guidance      + persona guidance g = 1.5, greedy
    levers_all           guards, 4 candidates and guidance together

The persona score is the model's own likelihood ratio (card + adapter vs bare base); the judge
of attribution is a separate MiniLM + logistic-regression classifier, never used to pick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from bot.characters import Character
from bot.config import Config, GenerationConfig
from bot.context import PromptAssembler
from bot.engine import Batcher, InferenceEngine
from bot.generation.embedded import EmbeddedBackend
from bot.responder import Reply, Responder

if TYPE_CHECKING:
    from finetune.evaluate import EvalOptions, Item

log = logging.getLogger(__name__)

# Set-up -> generation settings over the config's (max_new_tokens comes from the options).
LEVER_SETUPS: dict[str, dict[str, Any]] = {
    "card_adapter_guards": {"temperature": 0.0},
    "levers_candidates": {"candidates": 4},
    "levers_guidance": {"temperature": 0.0, "persona_guidance": 1.5},
    "levers_all": {"candidates": 4, "persona_guidance": 1.5},
}


def lever_generation(
    config: Config, overrides: dict[str, Any], max_new_tokens: int
) -> GenerationConfig:
    """The generation config a lever set-up (its `overrides` of the config) answers with."""
    values = config.generation.model_dump() | overrides
    if values["temperature"] == 0:
        values["candidates"] = 1
    return GenerationConfig.model_validate(values | {"max_new_tokens": max_new_tokens})


def answer_with_levers(
    engine: InferenceEngine,
    characters: dict[str, Character],
    items: list[Item],
    config: Config,
    options: EvalOptions,
    *,
    assembler: PromptAssembler,
    setups: dict[str, dict[str, Any]] = LEVER_SETUPS,
) -> None:
    """Fill `item.answers[setup]` and `item.actions[setup]` (the guard action) for every
    set-up (name -> generation overrides), seeded with the options' seed; prompts come from
    `assembler`, as the bot's."""
    asyncio.run(_answer(engine, characters, items, config, options, assembler, setups))


async def _answer(
    engine: InferenceEngine,
    characters: dict[str, Character],
    items: list[Item],
    config: Config,
    options: EvalOptions,
    assembler: PromptAssembler,
    setups: dict[str, dict[str, Any]],
) -> None:
    seed = engine.seed
    engine.seed = options.seed  # every batch starts from it: sampled set-ups repeat exactly
    batcher = Batcher(engine, max_batch_size=options.batch_size, max_wait_ms=50)
    backend = EmbeddedBackend(engine, batcher, config.characters_path)
    try:
        for setup, overrides in setups.items():
            generation = lever_generation(config, overrides, options.max_new_tokens)
            responder = Responder(generation=generation, cast=characters.values(), backend=backend)
            # One character at a time: its items' batches share the card prefix.
            for character_id, character in characters.items():
                mine = [item for item in items if item.character == character_id]
                start = time.perf_counter()
                replies = await asyncio.gather(
                    *(_respond(responder, character, item, assembler) for item in mine)
                )
                for item, reply in zip(mine, replies, strict=True):
                    item.answers[setup] = reply.text
                    item.actions[setup] = reply.guard_action
                log.info(
                    "%s, %s: %d answers in %.0f s",
                    setup,
                    character_id,
                    len(mine),
                    time.perf_counter() - start,
                )
    finally:
        await batcher.close()
        engine.seed = seed


async def _respond(
    responder: Responder, character: Character, item: Item, assembler: PromptAssembler
) -> Reply:
    prompt = await asyncio.to_thread(assembler.build, character, item.turns[:-1], item.turns[-1])
    return await responder.respond(character, prompt, item.turns[-1], item.turns[:-1])


def guard_actions(items: list[Item]) -> dict[str, dict[str, int]]:
    """Per lever set-up, how many answers were resampled or fell back (out of how many)."""
    actions: dict[str, dict[str, int]] = {}
    for setup in LEVER_SETUPS:
        counts = Counter(item.actions.get(setup, "") for item in items)
        actions[setup] = {
            "answers": sum(counts.values()),
            "resampled": counts["resampled"],
            "fallback": counts["fallback"],
        }
    return actions

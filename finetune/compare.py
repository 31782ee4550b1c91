"""Side by side: a character's answers with the card alone and with the card plus its adapter.

Both rows run in one batched `generate` (the adapter row through peft's `adapter_names`), with
greedy decoding, the bot's prompt builder and its post-processing, so what is printed is what
the bot would say in a fresh channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.characters import Character
from bot.config import Config
from bot.context import PromptAssembler
from bot.engine import GenerationRequest, InferenceEngine, SamplingSettings
from bot.history import Turn
from bot.responder import clean_character_reply


@dataclass(frozen=True)
class Comparison:
    prompt: str
    card_only: str
    with_adapter: str


def compare(
    character: Character,
    prompts: list[str],
    *,
    adapter: Path,
    config: Config,
    user_name: str = "User",
) -> list[Comparison]:
    engine = InferenceEngine.from_config(config)
    engine.load_adapter(character.id, adapter)
    settings = SamplingSettings.from_config(config.generation, temperature=0.0)
    assembler = PromptAssembler.from_config(engine.tokenizer, config, [character])  # as served
    requests = []
    for text in prompts:
        prompt = assembler.build(character, [], Turn("user", user_name, text))
        for adapter_name in (None, character.id):
            requests.append(GenerationRequest(prompt.text, settings, adapter=adapter_name))
    results = engine.generate(requests)

    def clean(index: int) -> str:
        result = results[index]
        return clean_character_reply(
            character,
            result.text,
            cast=[],
            authors=[user_name],
            hit_token_limit=result.hit_token_limit,
            fallback=character.fallback(),
        )

    return [Comparison(text, clean(2 * i), clean(2 * i + 1)) for i, text in enumerate(prompts)]

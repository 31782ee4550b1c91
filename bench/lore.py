"""What lore costs per reply: the shipped prompt with lore vs the same without (today's path).

Both set-ups answer the same messages through `Responder.respond` as the bot calls it (the
embedded backend, the shipped adapters, config.yaml's generation, a seeded engine):

    no lore   PromptAssembler with `prompt.lore: false`: card, examples, history, message
    lore      the shipped PromptAssembler: + the entries the message fires (keys; MiniLM
              similarity when no key fires), placed right before the message

Messages: the ordinary conversations of `bench.levers` (with their 2-turn histories) and one
lore question per character (an entry's held-out question). Each message goes through both
set-ups in turn (interleaved, so a busy spell of a shared machine does not land on one). Per
set-up: prompt assembly time (lore activation and similarity included), prompt tokens, reply
latency (p50, mean) and seconds per posted token; ratios are lore / no lore in this run.

    .venv/bin/python -m bench.lore [--rounds 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from dataclasses import dataclass, field

from bench.levers import CONVERSATIONS
from bench.worker import percentile
from bot.characters import Character, CharacterRegistry
from bot.config import load_config
from bot.context import PromptAssembler
from bot.engine import Batcher, InferenceEngine
from bot.generation.embedded import EmbeddedBackend, load_adapters
from bot.history import Turn
from bot.responder import Responder


@dataclass
class Measured:
    label: str
    latencies: list[float] = field(default_factory=list)
    assembly: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    posted_tokens: int = 0
    lore_fired: int = 0

    def line(self) -> str:
        return (
            f"{self.label:<8} reply p50 {percentile(self.latencies, 50):5.2f} s, mean "
            f"{statistics.fmean(self.latencies):5.2f} s, "
            f"{sum(self.latencies) / max(self.posted_tokens, 1) * 1000:4.0f} ms/posted token; "
            f"assembly {statistics.fmean(self.assembly) * 1000:5.1f} ms; prompt "
            f"{statistics.fmean(self.prompt_tokens):4.0f} tokens; lore fired in "
            f"{self.lore_fired} of {len(self.latencies)}"
        )


def messages(registry: CharacterRegistry) -> list[tuple[Character, list[Turn], Turn]]:
    chosen = []
    for character_id, earlier, answer, new in CONVERSATIONS:
        character = registry.get(character_id)
        history = [
            Turn("user", "User", earlier, character_id=character.id),
            Turn("character", character.name, answer, character_id=character.id),
        ]
        chosen.append((character, history, Turn("user", "User", new, character_id=character.id)))
    for character in registry:
        asked = [q for e in character.lore_entries for q in e.eval_questions]
        if asked:
            message = Turn("user", "User", asked[0], character_id=character.id)
            chosen.append((character, [], message))
    return chosen


async def run(rounds: int, seed: int) -> None:
    config = load_config()
    registry = CharacterRegistry.load(config.characters_path)
    engine = InferenceEngine.from_config(config)
    engine.seed = seed
    load_adapters(engine, registry)
    batcher = Batcher(engine, max_batch_size=8, max_wait_ms=15)
    await batcher.start()
    backend = EmbeddedBackend(engine, batcher, config.characters_path)
    responder = Responder(generation=config.generation, cast=registry, backend=backend)
    no_lore = config.model_copy(update={"prompt": config.prompt.model_copy(update={"lore": False})})
    setups = {
        "no lore": PromptAssembler.from_config(engine.tokenizer, no_lore, registry),
        "lore": PromptAssembler.from_config(engine.tokenizer, config, registry),
    }
    measured = {label: Measured(label) for label in setups}
    work = messages(registry)
    # Warm-up: MiniLM's entry vectors and the engine's first batch are not a reply's cost.
    for character, history, message in work:
        setups["lore"].build(character, history, message)
    character, history, message = work[0]
    prompt = setups["lore"].build(character, history, message)
    await responder.respond(character, prompt, message, history)
    try:
        for _ in range(rounds):
            for character, history, message in work:
                for label, assembler in setups.items():
                    m = measured[label]
                    start = time.perf_counter()
                    prompt = assembler.build(character, history, message)
                    built = time.perf_counter()
                    reply = await responder.respond(character, prompt, message, history)
                    m.latencies.append(time.perf_counter() - start)
                    m.assembly.append(built - start)
                    m.prompt_tokens.append(prompt.token_count)
                    m.posted_tokens += len(engine.tokenizer.encode(reply.text))
                    m.lore_fired += bool(prompt.lore)
    finally:
        await batcher.close()
    print(f"{len(work)} messages x {rounds} rounds, one at a time, seed {seed}")
    for m in measured.values():
        print(m.line())
    base, lore = measured["no lore"], measured["lore"]
    p50_ratio = percentile(lore.latencies, 50) / percentile(base.latencies, 50)
    mean_ratio = statistics.fmean(lore.latencies) / statistics.fmean(base.latencies)
    print(f"ratio lore / no lore: p50 latency x{p50_ratio:.2f}, mean latency x{mean_ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lore", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the messages [2]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args.rounds, args.seed))


if __name__ == "__main__":
    main()

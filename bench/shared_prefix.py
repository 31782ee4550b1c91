"""One batch of a character's prompts: its card run once (shared prefix) vs once per row.

8 different messages to Goku, prompted as the bot prompts (card, example dialogues, message),
greedy, through his adapter. The baseline is the same engine with sharing turned off
(`min_shared_prefix` above any prompt length), in the same process.

    .venv/bin/python -m bench.shared_prefix [--max-new-tokens 24] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

from bot.characters import CharacterRegistry
from bot.config import load_config
from bot.engine import GenerationRequest, InferenceEngine, SamplingSettings
from bot.engine.rows import MIN_SHARED_PREFIX, shared_prefix_length
from bot.history import Turn
from bot.prompt import build_prompt

MESSAGES = [
    "Hi Goku!",
    "What do you like to eat?",
    "Who is Vegeta to you?",
    "Can you fly?",
    "What's the strongest you've ever fought?",
    "Train with me tomorrow?",
    "Do you ever get scared?",
    "Where do you live?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    config = load_config()
    engine = InferenceEngine.from_config(config)
    goku = CharacterRegistry.load(config.characters_path).get("goku")
    adapter = None
    if goku.has_adapter:
        engine.load_adapter("goku", goku.adapter_path)
        adapter = "goku"
    settings = SamplingSettings.from_config(
        config.generation, temperature=0.0, max_new_tokens=args.max_new_tokens
    )
    prompts = [
        build_prompt(
            goku, [], Turn("user", "Sam", m), tokenizer=engine.tokenizer, budget=10**6
        ).text
        for m in MESSAGES
    ]
    requests = [GenerationRequest(p, settings, adapter=adapter) for p in prompts]
    ids = [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    print(
        f"{len(prompts)} prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens, "
        f"{shared_prefix_length(ids)} shared; adapter: {adapter or 'none'}"
    )
    engine.generate(requests[:2])  # warm-up

    timings: dict[str, float] = {}
    outputs = {}
    for mode, threshold in (("once per row", 10**9), ("shared prefix", MIN_SHARED_PREFIX)):
        engine.min_shared_prefix = threshold
        best = float("inf")
        for _ in range(args.rounds):
            started = time.perf_counter()
            outputs[mode] = [r.text for r in engine.generate(requests, seed=0)]
            best = min(best, time.perf_counter() - started)
        timings[mode] = best
        print(f"{mode:>14}: {best:.2f} s for the batch (best of {args.rounds})")
    same = sum(a == b for a, b in zip(*outputs.values(), strict=True))
    ratio = timings["once per row"] / timings["shared prefix"]
    print(f"ratio once per row / shared prefix: {ratio:.2f}x")
    print(f"identical greedy outputs: {same} of {len(prompts)}")


if __name__ == "__main__":
    main()

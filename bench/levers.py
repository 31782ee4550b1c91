"""What the serving levers cost per reply: `generation.candidates` and `persona_guidance`.

Five set-ups answer the same messages through `Responder.respond`, as the bot calls it (the
embedded backend: engine and batcher in this process, the shipped adapters, a seeded engine,
temperature 0.7 and top_p 0.9 from the config): N=1 g=1 (the baseline, today's reply), N=2 g=1,
N=4 g=1, N=1 g=1.5 and N=4 g=1.5 (N candidates, g persona guidance). The messages are varied
questions to Goku and Light, each after a 2-turn history so the prompt is the bot's.

For each set-up: the K messages one at a time (a single user's latency: p50, p95, seconds per
reply), the tokens per second sampled (every candidate's tokens) and posted (the chosen reply's),
the share of a reply spent in the persona-score pass (`backend.score`, timed by a shim that only
measures), then the K messages at once (`asyncio.gather`: replies per second under a burst).
The single replies are interleaved (each message through every set-up in turn), so a busy
spell of a shared machine does not land on one set-up only. Ratios are to the baseline, measured
in the same run (latency: p50 to p50); peak RSS at the end. Guard resamples and fallbacks are
counted: a resample samples a second round that `reply.candidates` does not hold.

    .venv/bin/python -m bench.levers [--replies 4] [--tokens 48] [--seed 0]

On a 2-core CPU the defaults take about 6 minutes and `--replies 8` about 12: the bursts of
the levered set-ups dominate (N=4 g=1.5 at 8 messages is 32 requests, 4 batches of 16 rows).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import statistics
import time
from dataclasses import dataclass, field

import torch

from bench.worker import percentile
from bot.characters import Character, CharacterRegistry
from bot.config import PROJECT_ROOT, GenerationConfig, load_config
from bot.engine import Batcher, InferenceEngine
from bot.generation.embedded import EmbeddedBackend
from bot.history import Turn
from bot.prompt import Prompt, build_prompt
from bot.responder import Reply, Responder

SETUPS = [(1, 1.0), (2, 1.0), (4, 1.0), (1, 1.5), (4, 1.5)]  # (candidates, persona guidance)

# (character, earlier user message, the character's answer to it, the new message)
CONVERSATIONS = [
    (
        "goku",
        "Hey Goku, how was training today?",
        "Great! I did a thousand push-ups and I'm starving now!",
        "What's your favourite food?",
    ),
    (
        "light",
        "Light, did you finish the assignment for criminology?",
        "Last night. It was less difficult than the professor seems to think.",
        "Do you think Kira is doing the right thing?",
    ),
    (
        "goku",
        "Goku, I saw Vegeta at the lake.",
        "Really? He's probably training too. He never wants to lose to me!",
        "Who is the strongest fighter you've ever faced?",
    ),
    (
        "light",
        "Ryuzaki asked about you again.",
        "He asks about everyone. It's how he thinks.",
        "Are you scared that L will catch you?",
    ),
    (
        "goku",
        "I want to get stronger like you.",
        "Then let's train together! You just have to keep pushing your limits.",
        "Can you teach me the Kamehameha?",
    ),
    (
        "light",
        "My little sister needs help with math homework.",
        "Sayu struggles with it too. Patience helps more than talent.",
        "What would you do if you could change the world?",
    ),
    (
        "goku",
        "Chi-Chi called, she says dinner is ready.",
        "Oh man, I'd better hurry before Gohan eats everything!",
        "Do you ever get scared before a fight?",
    ),
    (
        "light",
        "You got the top score on the national exam again.",
        "It was a reasonable test. I prepared properly, that's all.",
        "Is it true you want to join the police like your father?",
    ),
]


@dataclass
class Measured:
    label: str
    latencies: list[float] = field(default_factory=list)  # single replies, seconds
    sampled_tokens: int = 0  # every candidate of the single replies
    posted_tokens: int = 0  # the chosen reply of the single replies
    score_seconds: float = 0.0  # in backend.score during the single replies
    score_calls: int = 0
    burst_seconds: float = 0.0
    burst_replies: int = 0
    burst_sampled_tokens: int = 0
    resampled: int = 0  # replies (single and burst) whose first round all broke a guard
    fallbacks: int = 0
    rss_mib: float = 0.0  # peak so far, after this set-up's burst

    @property
    def per_reply(self) -> float:
        return statistics.fmean(self.latencies)

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p95(self) -> float:
        return percentile(self.latencies, 0.95)

    @property
    def sampled_rate(self) -> float:
        return self.sampled_tokens / sum(self.latencies)

    @property
    def posted_rate(self) -> float:
        return self.posted_tokens / sum(self.latencies)

    @property
    def scoring_share(self) -> float:
        return self.score_seconds / sum(self.latencies)

    @property
    def burst_rate(self) -> float:
        return self.burst_replies / self.burst_seconds


class ScoreTimer:
    """Wraps the backend's `score` to add up the time spent in it (measuring only)."""

    def __init__(self, backend: EmbeddedBackend) -> None:
        self.seconds = 0.0
        self.calls = 0
        inner = backend.score

        async def score(requests):
            started = time.perf_counter()
            try:
                return await inner(requests)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        backend.score = score  # type: ignore[method-assign]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prompts(
    registry: CharacterRegistry, tokenizer, budget: int, count: int
) -> list[tuple[Character, Prompt, Turn, list[Turn]]]:
    """`count` (character, prompt, message, history), cycling through CONVERSATIONS."""
    out = []
    for i in range(count):
        character_id, earlier, answer, new = CONVERSATIONS[i % len(CONVERSATIONS)]
        character = registry.get(character_id)
        history = [
            Turn("user", "alice", earlier, character_id=character.id),
            Turn("character", character.name, answer, character_id=character.id),
        ]
        message = Turn(role="user", author="alice", content=new, character_id=character.id)
        prompt = build_prompt(character, history, message, tokenizer=tokenizer, budget=budget)
        out.append((character, prompt, message, history))
    return out


def tally(measured: Measured, reply: Reply) -> tuple[int, int]:
    """(sampled, posted) tokens of a reply, counting its guard outcome."""
    measured.resampled += reply.guard_action == "resampled"
    measured.fallbacks += reply.guard_action == "fallback"
    sampled = sum(c.result.new_tokens for c in reply.candidates)
    posted = 0 if reply.guard_action == "fallback" else reply.result.new_tokens
    return sampled, posted


async def single(measured: Measured, responder: Responder, timer: ScoreTimer, item) -> None:
    """One reply on its own (nothing else in the batcher), timed, with its scoring pass."""
    score_seconds, score_calls = timer.seconds, timer.calls
    started = time.perf_counter()
    reply = await responder.respond(*item)
    measured.latencies.append(time.perf_counter() - started)
    measured.score_seconds += timer.seconds - score_seconds
    measured.score_calls += timer.calls - score_calls
    sampled, posted = tally(measured, reply)
    measured.sampled_tokens += sampled
    measured.posted_tokens += posted


async def burst(measured: Measured, responder: Responder, work: list) -> None:
    """Every message at once, as when several users write together."""
    started = time.perf_counter()
    replies = await asyncio.gather(*(responder.respond(*item) for item in work))
    measured.burst_seconds = time.perf_counter() - started
    measured.burst_replies = len(replies)
    measured.burst_sampled_tokens = sum(tally(measured, r)[0] for r in replies)
    measured.rss_mib = peak_rss_mib()


def responder_for(config, registry, backend, candidates: int, guidance: float, tokens: int):
    generation = GenerationConfig.model_validate(
        config.generation.model_dump()
        | {"candidates": candidates, "persona_guidance": guidance, "max_new_tokens": tokens}
    )
    return Responder(generation=generation, cast=registry, backend=backend)


async def main(args: argparse.Namespace) -> None:
    wall = time.perf_counter()
    config = load_config()
    registry = CharacterRegistry.load(PROJECT_ROOT / "characters")
    engine = InferenceEngine.from_config(config)
    for character_id in ("goku", "light"):
        character = registry.get(character_id)
        engine.load_adapter(character.id, character.adapter_path)
    engine.seed = args.seed
    batcher = Batcher(engine, max_batch_size=8, max_wait_ms=15)
    await batcher.start()
    backend = EmbeddedBackend(engine, batcher, PROJECT_ROOT / "characters")
    timer = ScoreTimer(backend)
    work = prompts(registry, engine.tokenizer, config.prompt.token_budget, args.replies)
    tokenize = engine.tokenizer
    lengths = [len(tokenize(p.text, add_special_tokens=False)["input_ids"]) for _, p, *_ in work]
    print(
        f"model {engine.model_name} on {engine.device}, {torch.get_num_threads()} torch threads; "
        f"{args.replies} replies per set-up (goku, light; prompts {min(lengths)}-{max(lengths)} "
        f"tokens), max_new_tokens {args.tokens}, temperature {config.generation.temperature}, "
        f"top_p {config.generation.top_p}, seed {args.seed}"
    )

    try:
        # Warm-up: both decode paths (transformers' generate, the guided loop) and a score pass.
        for candidates, guidance in ((1, 1.0), (2, 1.5)):
            responder = responder_for(config, registry, backend, candidates, guidance, args.tokens)
            await responder.respond(*work[0])
        setups = [
            (
                Measured(f"N={candidates} g={guidance:g}"),
                responder_for(config, registry, backend, candidates, guidance, args.tokens),
            )
            for candidates, guidance in SETUPS
        ]
        # Single replies interleaved (each message through every set-up in turn), so a
        # slow spell of the machine falls on all set-ups alike rather than on one.
        for item in work:
            for measured, responder in setups:
                await single(measured, responder, timer, item)
        for measured, responder in setups:
            await burst(measured, responder, work)
        results = [measured for measured, _ in setups]
    finally:
        await batcher.close()

    base = results[0]
    print(
        "\n| set-up | p50 | p95 | s/reply | sampled tok/s | posted tok/s | scoring "
        "| burst replies/s | p50 vs N=1 g=1 | replies/s vs N=1 g=1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in results:
        print(
            f"| {m.label}{' (baseline)' if m is base else ''} "
            f"| {m.p50:.2f} s | {m.p95:.2f} s | {m.per_reply:.2f} | {m.sampled_rate:.1f} "
            f"| {m.posted_rate:.1f} | {m.scoring_share:.0%} | {m.burst_rate:.2f} "
            f"| {m.p50 / base.p50:.2f}x | {m.burst_rate / base.burst_rate:.2f}x |"
        )
    print()
    for m in results:
        scoring = (
            f"{1000 * m.score_seconds / m.score_calls:.0f} ms per score pass x {m.score_calls}"
            if m.score_calls
            else "no score pass"
        )
        print(
            f"{m.label}: p50 {m.p50:.2f} s ({m.p50 / base.p50:.2f}x), p95 {m.p95:.2f} s, "
            f"{m.per_reply:.2f} s/reply ({m.per_reply / base.per_reply:.2f}x); "
            f"{m.sampled_rate:.1f} sampled, {m.posted_rate:.1f} posted tok/s; scoring "
            f"{m.scoring_share:.0%} ({scoring}); burst of {m.burst_replies}: "
            f"{m.burst_seconds:.1f} s, {m.burst_rate:.2f} replies/s "
            f"({m.burst_rate / base.burst_rate:.2f}x), "
            f"{m.burst_sampled_tokens / m.burst_seconds:.1f} sampled tok/s; "
            f"guard resampled {m.resampled}, fallback {m.fallbacks} "
            f"(of {len(m.latencies) + m.burst_replies}); peak RSS after its burst "
            f"{m.rss_mib:.0f} MiB"
        )
    print(
        f"\npeak RSS at the end: {peak_rss_mib():.0f} MiB; "
        f"wall time {time.perf_counter() - wall:.0f} s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=4, help="messages per set-up (K)")
    parser.add_argument("--tokens", type=int, default=48, help="max_new_tokens (T)")
    parser.add_argument("--seed", type=int, default=0, help="the engine's sampling seed")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args()))

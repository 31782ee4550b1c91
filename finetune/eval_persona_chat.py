"""The Synthetic-Persona-Chat sections of the evaluation: the damage guard (general dialogue
with and without each character adapter) and the persona-injection protocol."""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Config
from bot.embeddings import load_encoder
from bot.engine import InferenceEngine, SamplingSettings
from bot.prompt import build_prompt
from bot.responder import clean_character_reply
from finetune import metrics, persona_chat
from finetune.batch_generate import Job, generate_all
from finetune.eval_report import PERSONA_SETUPS
from finetune.losses import example_losses, perplexity_under
from finetune.persona_chat import Dialogue, encode_records, protocol_records
from finetune.recipe import Recipe

if TYPE_CHECKING:
    from finetune.evaluate import EvalOptions

log = logging.getLogger(__name__)


def persona_chat_sections(
    engine: InferenceEngine,
    config: Config,
    ids: list[str],
    spc_path: Path,
    adapter: Path,
    options: EvalOptions,
) -> dict[str, Any]:
    """On held-out Synthetic-Persona-Chat dialogues: the damage guard (general dialogue with and
    without each character adapter) and the persona-injection protocol."""
    dialogues, pool = held_out_dialogues(spc_path, options.spc_dialogues)
    damage_guard = spc_damage_guard(engine, ids, dialogues, options)
    with_adapter = (adapter / "adapter_config.json").exists()
    if with_adapter:
        engine.load_adapter(persona_chat.ADAPTER_ID, adapter)
    else:
        log.warning(
            "No persona-chat adapter in %s (train it with `python -m finetune "
            "train-persona-chat`); the protocol runs without it",
            adapter,
        )
    protocol = persona_protocol(engine, config, dialogues, pool, options, with_adapter=with_adapter)
    return {"damage_guard": damage_guard, "persona_chat": protocol}


def held_out_dialogues(spc_path: Path, count: int) -> tuple[list[Dialogue], list[Dialogue]]:
    """The first `count` held-out Synthetic-Persona-Chat dialogues, and all of them."""
    held_out = [d for d in persona_chat.read_dialogues(spc_path) if persona_chat.is_held_out(d)]
    return held_out[:count], held_out


def spc_damage_guard(
    engine: InferenceEngine, ids: list[str], dialogues: list[Dialogue], options: EvalOptions
) -> dict[str, float]:
    """Perplexity of a User 2 turn per dialogue, given its persona as the card, per adapter."""
    examples = encode_records(protocol_records(dialogues), engine.tokenizer)
    result = {"base": perplexity_under(engine, None, examples, options.batch_size)}
    for a in ids:
        result[a] = perplexity_under(engine, a, examples, options.batch_size)
    result["dialogues"] = len(examples)
    return result


def persona_protocol(
    engine: InferenceEngine,
    config: Config,
    dialogues: list[Dialogue],
    pool: list[Dialogue],
    options: EvalOptions,
    *,
    with_adapter: bool,
) -> dict[str, Any]:
    """The persona-injection protocol: a User 2 turn of each held-out dialogue, generated
    (BLEU, ROUGE-L, MiniLM similarity against the real turn) and picked out by likelihood from
    `options.candidates` replies (hits@1; distractors are User 2 turns of other held-out
    dialogues in `pool`)."""
    setups = PERSONA_SETUPS if with_adapter else PERSONA_SETUPS[:2]
    records = protocol_records(dialogues)
    settings = SamplingSettings.from_config(
        config.generation, temperature=0.0, max_new_tokens=options.max_new_tokens
    )
    adapter_of = {"persona_adapter": persona_chat.ADAPTER_ID}
    slots, jobs = [], []
    for record in records:
        for setup in setups:
            card = persona_chat.persona_card(None if setup == "base" else record.persona)
            prompt = build_prompt(
                card,
                list(record.context[:-1]),
                record.context[-1],
                tokenizer=engine.tokenizer,
                budget=config.prompt.token_budget,
            )
            slots.append(setup)
            jobs.append(Job(prompt.text, adapter_of.get(setup)))
    answers: dict[str, list[str]] = {setup: [] for setup in setups}
    results = generate_all(
        engine,
        jobs,
        settings,
        batch_size=options.batch_size,
        seed=options.seed,
        desc="persona-chat",
    )
    for setup, result in zip(slots, results, strict=True):
        answers[setup].append(
            clean_character_reply(
                persona_chat.persona_card(None),
                result.text,
                cast=[],
                authors=["User 1"],
                hit_token_limit=result.hit_token_limit,
            )
        )

    # Candidates: the real turn first, then distractors drawn (seeded) from other dialogues.
    rng = random.Random(options.seed)
    speaker = persona_chat.SPEAKER
    pool_turns = [(d.index, text) for d in pool for who, text in d.turns if who == speaker]
    candidates = []
    for record in records:
        others = [text for row, text in pool_turns if row != record.row]
        candidates.append([record.reply, *rng.sample(others, options.candidates - 1)])
    gold = [r.reply for r in records]
    batch = options.batch_size
    result: dict[str, Any] = {"dialogues": len(records), "candidates": options.candidates}
    for setup in setups:
        scored = [
            dataclasses.replace(record, reply=candidate)
            for record, row in zip(records, candidates, strict=True)
            for candidate in row
        ]
        examples = encode_records(scored, engine.tokenizer, persona=setup != "base")
        with engine.using_adapter(adapter_of.get(setup)) as model:
            losses = example_losses(model, examples, Recipe(batch_size=batch), engine.device)
        n = options.candidates
        rows = [losses[i : i + n] for i in range(0, len(losses), n)]
        result[setup] = {
            "bleu": metrics.bleu(answers[setup], gold),
            "rouge_l": metrics.mean_rouge_l(answers[setup], gold),
            "similarity": load_encoder().mean_similarity(answers[setup], gold),
            "hits_at_1": metrics.hits_at_1(rows, [0] * len(rows), higher_is_better=False),
        }
    result["samples"] = [
        {"context": r.context[-1].content, "gold": r.reply} | {s: answers[s][i] for s in setups}
        for i, r in enumerate(records[:4])
    ]
    return result

"""The report's lore section: does a character know its own story?

Per character, every lore entry's `eval_questions` (phrasings the knowledge pairs never use)
are asked in a fresh channel, greedy, under four set-ups:

    card          the card and examples, base model, no lore in the prompt
    card_lore     + the lore entries the question fires (keys, then similarity), base model
    adapter       the card through the character's adapter, no lore: what the adapter knows
    adapter_lore  the shipped set-up: card + fired lore + adapter, answered by the bot's
                  Responder with config.yaml's generation (rule guards on), greedy

An answer passes when it states the entry's fact (one of the entry's `answer` regexes
matches). Pass rates come with 95% percentile-bootstrap intervals over the questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.characters import Character
from bot.config import Config
from bot.context import PromptAssembler
from bot.engine import InferenceEngine, SamplingSettings
from bot.history import Turn
from bot.responder import clean_character_reply
from finetune import metrics
from finetune.batch_generate import Job, generate_all
from finetune.eval_levers import answer_with_levers

# Set-up -> (answers under the character's adapter, lore in the prompt).
LORE_SETUPS: dict[str, tuple[bool, bool]] = {
    "card": (False, False),
    "card_lore": (False, True),
    "adapter": (True, False),
    "adapter_lore": (True, True),
}
SERVED_SETUP = "adapter_lore"


@dataclass
class LoreQuestion:
    character: str
    entry: str
    question: str
    turns: list[Turn]
    answers: dict[str, str]
    actions: dict[str, str]
    passed: dict[str, bool]


def lore_questions(characters: Sequence[Character]) -> list[LoreQuestion]:
    """Every held-out question of every character's lore entries, in card order."""
    questions = []
    for character in characters:
        for entry in character.lore_entries:
            if not entry.enabled:
                continue
            for question in entry.eval_questions:
                turn = Turn("user", "User", question, character_id=character.id, timestamp=0.0)
                questions.append(LoreQuestion(character.id, entry.id, question, [turn], {}, {}, {}))
    return questions


def answer_lore_questions(
    engine: InferenceEngine,
    characters: Sequence[Character],
    questions: list[LoreQuestion],
    config: Config,
    options: Any,  # EvalOptions: max_new_tokens, batch_size, seed
    assembler: PromptAssembler,
) -> None:
    by_id = {c.id: c for c in characters}
    settings = SamplingSettings.from_config(
        config.generation, temperature=0.0, max_new_tokens=options.max_new_tokens
    )
    slots, jobs = [], []
    for q in questions:
        character = by_id[q.character]
        for setup, (adapter, lore) in LORE_SETUPS.items():
            if setup == SERVED_SETUP:
                continue
            prompt = assembler.build(character, [], q.turns[-1], lore=lore)
            engine_adapter = character.id if adapter and character.id in engine.adapters else None
            slots.append((q, setup))
            jobs.append(Job(prompt.text, engine_adapter, group=character.id))
    results = generate_all(
        engine, jobs, settings, batch_size=options.batch_size, seed=options.seed, desc="lore"
    )
    for (q, setup), result in zip(slots, results, strict=True):
        q.answers[setup] = clean_character_reply(
            by_id[q.character],
            result.text,
            cast=characters,
            authors=["User"],
            hit_token_limit=result.hit_token_limit,
        )
    # The shipped set-up through the bot's own Responder (guards), greedy.
    answer_with_levers(
        engine,
        by_id,
        questions,  # duck-typed as eval Items: character, turns, answers, actions
        config,
        options,
        assembler=assembler,
        setups={SERVED_SETUP: {"temperature": 0.0}},
    )
    entries = {(c.id, e.id): e for c in characters for e in c.lore_entries}
    for q in questions:
        entry = entries[(q.character, q.entry)]
        q.passed = {setup: entry.states_fact(q.answers[setup]) for setup in LORE_SETUPS}


def lore_section(questions: list[LoreQuestion], character_ids: list[str]) -> dict[str, Any]:
    """Pass rates per set-up, pooled and per character, with bootstrap intervals."""

    def rate(outcomes: list[float]) -> dict[str, Any]:
        if not outcomes:
            return {"pass_rate": None, "interval": None, "n": 0}
        low, high = metrics.bootstrap_interval(outcomes)
        return {
            "pass_rate": sum(outcomes) / len(outcomes),
            "interval": [low, high],
            "n": len(outcomes),
        }

    section: dict[str, Any] = {"setups": list(LORE_SETUPS), "all": {}, "per_character": {}}
    for setup in LORE_SETUPS:
        section["all"][setup] = rate([float(q.passed[setup]) for q in questions])
        section["per_character"][setup] = {
            cid: rate([float(q.passed[setup]) for q in questions if q.character == cid])
            for cid in character_ids
        }
    section["answers"] = [
        {
            "character": q.character,
            "entry": q.entry,
            "question": q.question,
            "answers": q.answers,
            "passed": q.passed,
        }
        for q in questions
    ]
    return section


def lore_markdown(section: dict[str, Any]) -> str:
    def cell(figure: dict[str, Any]) -> str:
        if figure["pass_rate"] is None:
            return "-"
        low, high = figure["interval"]
        return f"{figure['pass_rate']:.2f} [{low:.2f}, {high:.2f}]"

    ids = sorted(next(iter(section["per_character"].values())))
    lines = [
        "## Lore: does each character know its own story?",
        "",
        "Each lore entry's `eval_questions` (phrasings the knowledge pairs never use), greedy; "
        "an answer passes when it states the entry's fact (the entry's `answer` regexes). "
        "`card`: card only; `card_lore`: + the lore entries the question fires; `adapter`: the "
        "card through the character's adapter, no lore; `adapter_lore`: the shipped set-up "
        "(card + lore + adapter, the bot's Responder with its rule guards). Brackets: 95% "
        "bootstrap intervals over the questions.",
        "",
        "| set-up | all | " + " | ".join(ids) + " |",
        "|---|---|" + "---|" * len(ids),
    ]
    for setup in section["setups"]:
        per = section["per_character"][setup]
        row = [setup, cell(section["all"][setup]), *(cell(per[cid]) for cid in ids)]
        lines.append("| " + " | ".join(row) + " |")
    n = {cid: section["per_character"][section["setups"][0]][cid]["n"] for cid in ids}
    lines += ["", "Questions: " + ", ".join(f"{cid} {n[cid]}" for cid in ids) + "."]
    return "\n".join(lines) + "\n"


def run_lore(
    characters: list[Character],
    *,
    engine: InferenceEngine,
    config: Config,
    options: Any,
) -> dict[str, Any]:
    """The lore section: ask, answer under every set-up, score."""
    questions = lore_questions(characters)
    assembler = PromptAssembler.from_config(engine.tokenizer, config, characters)
    answer_lore_questions(engine, characters, questions, config, options, assembler)
    return lore_section(questions, [c.id for c in characters])

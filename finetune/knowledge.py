"""Knowledge pairs: training pairs from a character's lore entries, so that the adapter knows
the facts even when retrieval misses them (after ChatNVL's question-answer pairs generated
from the character's description).

For each entry with `questions` and `answer`, each training question is asked with the entry
in the prompt (placed as the bot places fired lore), and the model (base + the character's
adapter) samples `samples` answers in the character's voice. Rejection sampling keeps only
answers that state the entry's fact (one of its `answer` regexes matches), pass the card's rule
guards and speak in the first person (no "Goku's wife is ..." narration). Each question then
gives two records: one prompted with lore as the bot would prompt it (the entry is there when
its keys or similarity fire), one with no lore at all (`"lore": false`), each with its own kept
answer where there are two. `eval_questions` are never asked here: the report asks them.

Written to `characters/<id>/data/knowledge.jsonl` (trained beside train.jsonl) and summarised
in the dataset card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from bot.characters import Character
from bot.config import Config
from bot.engine import InferenceEngine
from bot.files import write_files_atomically
from bot.generation.request import SamplingSettings
from bot.guards import violations
from bot.history import Turn
from bot.lore import LoreEntry
from bot.lore_activation import LoreHit
from bot.prompt import build_prompt
from bot.responder import clean_character_reply
from bot.training_data import DatasetFiles, TrainingRecord, records_text
from finetune.batch_generate import Job, generate_all

log = logging.getLogger(__name__)
# Who asks: a few names, so the adapter does not learn that facts are asked by "User" only.
ASKERS = ("User", "Mika", "Sam", "Raven", "Jules")
CARD_SECTION = "## Knowledge pairs"


@dataclass(frozen=True)
class KnowledgeOptions:
    samples: int = 6  # answers sampled per question
    temperature: float = 0.8
    max_new_tokens: int = 64
    batch_size: int = 8
    seed: int = 0


@dataclass
class EntryCount:
    entry: str
    questions: int = 0
    sampled: int = 0
    kept: int = 0
    unanswered: list[str] = field(default_factory=list)  # questions with no kept answer


@dataclass
class KnowledgeResult:
    records: list[TrainingRecord]
    counts: list[EntryCount]

    @property
    def sampled(self) -> int:
        return sum(c.sampled for c in self.counts)

    @property
    def kept(self) -> int:
        return sum(c.kept for c in self.counts)

    def summary(self) -> dict[str, object]:
        return {
            "entries": len(self.counts),
            "questions": sum(c.questions for c in self.counts),
            "answers_sampled": self.sampled,
            "answers_kept": self.kept,
            "records": len(self.records),
            "records_without_lore": sum(1 for r in self.records if not r.lore),
            "unanswered": {c.entry: c.unanswered for c in self.counts if c.unanswered},
        }


def taught_entries(character: Character) -> list[LoreEntry]:
    """The entries knowledge pairs are made from: enabled, with questions and an answer."""
    return [e for e in character.lore_entries if e.enabled and e.questions and e.answer]


def narrates(character: Character, answer: str) -> bool:
    """Whether the answer talks about the character in the third person ("Goku's wife is",
    "Goku is"), as the lore entry does, instead of in the character's own voice."""
    names = "|".join(re.escape(n) for n in character.names)
    return bool(
        re.search(rf"\b({names})('s|\s+(is|was|has|had|lives|grew|studies))\b", answer, re.I)
    )


def acceptable(character: Character, entry: LoreEntry, question: str, answer: str) -> bool:
    return (
        len(answer.split()) >= 2
        and entry.states_fact(answer)
        and not violations(character, question, answer)
        and not narrates(character, answer)
    )


def _record(
    character: Character, entry: LoreEntry, question: str, asker: str, answer: str, lore: bool
) -> TrainingRecord:
    key = f"{character.id}\0{entry.id}\0{question}\0{lore}"
    return TrainingRecord(
        id=hashlib.sha256(key.encode()).hexdigest()[:16],
        context=(Turn("user", asker, question, timestamp=0.0),),
        reply=answer,
        scene=f"knowledge:{entry.id}",
        source=f"lore:{entry.id}",
        lore=lore,
    )


def knowledge_pairs(
    character: Character,
    engine: InferenceEngine,
    config: Config,
    options: KnowledgeOptions,
    cast: list[Character],
) -> KnowledgeResult:
    """Sample, filter and pair answers for every training question of the character's lore."""
    entries = taught_entries(character)
    adapter = character.id if character.id in engine.adapters else None
    settings = SamplingSettings.from_config(
        config.generation, temperature=options.temperature, max_new_tokens=options.max_new_tokens
    )
    asked: list[tuple[LoreEntry, str, str]] = []
    jobs: list[Job] = []
    for entry in entries:
        for n, question in enumerate(entry.questions):
            asker = ASKERS[(len(asked) + n) % len(ASKERS)]
            message = Turn("user", asker, question, timestamp=0.0)
            prompt = build_prompt(
                character,
                [],
                message,
                tokenizer=engine.tokenizer,
                budget=config.prompt.token_budget,
                lore=[LoreHit(entry, "key")],
            )
            asked.append((entry, question, asker))
            jobs += [Job(prompt.text, adapter, group=character.id)] * options.samples
    results = generate_all(
        engine, jobs, settings, batch_size=options.batch_size, seed=options.seed, desc="knowledge"
    )
    counts = {e.id: EntryCount(e.id) for e in entries}
    records: list[TrainingRecord] = []
    for index, (entry, question, asker) in enumerate(asked):
        count = counts[entry.id]
        count.questions += 1
        kept: list[str] = []
        for result in results[index * options.samples : (index + 1) * options.samples]:
            answer = clean_character_reply(
                character,
                result.text,
                cast=cast,
                authors=[asker],
                hit_token_limit=result.hit_token_limit,
            )
            count.sampled += 1
            if acceptable(character, entry, question, answer) and answer not in kept:
                kept.append(answer)
        count.kept += len(kept)
        if not kept:
            count.unanswered.append(question)
            continue
        records.append(_record(character, entry, question, asker, kept[0], lore=True))
        records.append(_record(character, entry, question, asker, kept[-1], lore=False))
    return KnowledgeResult(records, list(counts.values()))


def card_section(character: Character, result: KnowledgeResult, options: KnowledgeOptions) -> str:
    s = result.summary()
    lines = [
        CARD_SECTION,
        "",
        f"Made by `python -m finetune knowledge {character.id}` from {s['entries']} lore entries "
        f"with questions: {s['questions']} training questions, {options.samples} answers "
        f"sampled for each at temperature {options.temperature} with the entry in the prompt "
        f"({s['answers_sampled']} in all), **{s['answers_kept']} kept** (they state the "
        "entry's fact, pass the card's guards and speak in the first person). "
        f"{s['records']} records in `knowledge.jsonl` ({s['records_without_lore']} prompted "
        "without lore). The entries' `eval_questions` are never used here.",
        "",
        "| entry | questions | sampled | kept | questions with no kept answer |",
        "|---|---|---|---|---|",
    ]
    for c in result.counts:
        unanswered = "; ".join(c.unanswered) or "-"
        lines.append(f"| {c.entry} | {c.questions} | {c.sampled} | {c.kept} | {unanswered} |")
    return "\n".join(lines) + "\n"


def write_knowledge(
    files: DatasetFiles, character: Character, result: KnowledgeResult, options: KnowledgeOptions
) -> None:
    """knowledge.jsonl, and its section in the dataset card (replaced when there is one),
    all renamed into place together."""
    markdown = (
        files.card_markdown.read_text(encoding="utf-8") if files.card_markdown.exists() else ""
    )
    markdown = markdown.split(f"\n{CARD_SECTION}\n")[0].rstrip("\n")
    section = card_section(character, result, options)
    markdown = f"{markdown}\n\n{section}" if markdown else section
    card = _read_json(files.card_json)
    card["knowledge"] = result.summary()
    write_files_atomically(
        {
            files.knowledge: records_text(result.records),
            files.card_markdown: markdown,
            files.card_json: json.dumps(card, indent=2, ensure_ascii=False) + "\n",
        }
    )


def _read_json(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))

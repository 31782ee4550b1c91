"""`python -m finetune eval`: does each adapter make its character more itself?

Per character, on prompts none of the adapters trained on (its `eval.jsonl` and rule probes),
five set-ups answer with greedy decoding:

    base            the base model told only the character's name
    card_zero_shot  the full card (persona, style, rules), no example dialogues
    card_few_shot   the card and its example dialogues: what the bot sends without an adapter
    card_retrieved  the card with the character's training lines closest to the message as
                    examples (`prompt.examples: retrieved`), no adapter
    card_adapter    the same prompt, through the character's LoRA adapter

and the report measures: who a MiniLM + logistic-regression classifier (trained on the
characters' training lines) thinks is speaking; the rule probes' pass rate; BLEU, ROUGE-L,
embedding similarity and distinct-n against the held-out replies; each character's held-out
lines scored under every adapter (perplexity; the own adapter should fit best); and perplexity
on Synthetic-Persona-Chat dialogues with and without each adapter (general damage guard).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bot.characters import Character
from bot.chat import clean_character_reply
from bot.config import Config
from bot.embeddings import SentenceEncoder, load_encoder
from bot.engine import GenerationRequest, GenerationResult, InferenceEngine, SamplingSettings
from bot.example_retrieval import ExampleRetriever
from bot.history import Turn
from bot.prompt import build_prompt
from bot.training_data import DatasetFiles, TrainingRecord, read_records
from finetune import metrics, persona_chat
from finetune.attribution import train_attribution
from finetune.errors import FinetuneError
from finetune.examples import EncodedExample, encode_all
from finetune.losses import evaluate as mean_target_loss
from finetune.losses import example_losses
from finetune.persona_chat import Dialogue
from finetune.probes import Probe, character_probes
from finetune.recipe import Recipe

log = logging.getLogger(__name__)


class EvalError(FinetuneError):
    pass


SETUPS = ("base", "card_zero_shot", "card_few_shot", "card_retrieved", "card_adapter")
# Synthetic-Persona-Chat: no persona, the persona as the card, and that with the adapter
# trained on other dialogues (`python -m finetune train-persona-chat`).
PERSONA_SETUPS = ("base", "persona", "persona_adapter")
RETRIEVED_EXAMPLES = 4
# A character's held-out lines are scored as its adapter was trained on them: encoded within the
# recipe's default max_seq_len (1536), the length the character recipes train at.
LIKELIHOOD_MAX_SEQ_LEN: int = Recipe.model_fields["max_seq_len"].default
# Synthetic-Persona-Chat records (a persona, a dialogue so far, one User 2 turn) are short: 1024
# tokens holds the prompts the protocol scores and damage-guards, so they keep their context.
PERSONA_CHAT_MAX_SEQ_LEN = 1024


@dataclass(frozen=True)
class EvalOptions:
    # Running ~1000-token prompts dominates: these defaults take about 14 minutes on a 2-core
    # CPU (the phases' seconds are in report.json).
    prompts: int = 8  # held-out prompts per character
    probes: int = 10  # rule probes per character
    likelihood_lines: int = 20  # held-out lines scored under every adapter
    spc_dialogues: int = 20  # held-out Synthetic-Persona-Chat dialogues (guard and protocol)
    candidates: int = 20  # replies ranked by likelihood per dialogue (hits@1)
    max_new_tokens: int = 40
    batch_size: int = 8
    seed: int = 0

    @classmethod
    def quick(cls) -> EvalOptions:
        # A smoke run of every section in under 3 minutes on a 2-core CPU: one prompt and one
        # probe per character, few lines and dialogues.
        return cls(prompts=1, probes=1, likelihood_lines=2, spc_dialogues=2, max_new_tokens=24)


@dataclass
class Item:
    """One prompt to answer: held-out context (with its reference reply) or a rule probe."""

    character: str
    turns: list[Turn]
    reference: str | None = None
    probe: Probe | None = None
    answers: dict[str, str] = field(default_factory=dict)


def variant(character: Character, setup: str) -> Character:
    """The card each set-up prompts with."""
    if setup == "base":
        return character.model_copy(
            update={
                "description": f"{character.name}.",
                "personality": [],
                "speech_style": "",
                "rules": [],
                "scenario": "",
                "examples": [],
            }
        )
    if setup == "card_zero_shot":
        return character.model_copy(update={"examples": []})
    return character


def collect_items(characters: list[Character], root: Path, options: EvalOptions) -> list[Item]:
    items = []
    for character in characters:
        records = read_records(DatasetFiles.of(root, character.id).eval)
        held_out = [r for r in records if r.message is not None]
        for record in held_out[: options.prompts]:
            items.append(Item(character.id, list(record.context), reference=record.reply))
        for probe in character_probes(root, character.id)[: options.probes]:
            items.append(Item(character.id, [Turn("user", "User", probe.question)], probe=probe))
    return items


@dataclass(frozen=True)
class Job:
    prompt: str
    adapter: str | None
    group: str = ""  # prompts of one group start alike (one character's card): batched together


def generate_all(
    engine: InferenceEngine,
    jobs: list[Job],
    settings: SamplingSettings,
    options: EvalOptions,
    desc: str = "generate",
) -> list[GenerationResult]:
    """Greedy answers to the jobs, in job order. A batch holds one group under one adapter, so
    the engine runs the card the group's prompts share once for the whole batch."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[(job.adapter or "", job.group)].append(i)
    batches = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda i: jobs[i].prompt)
        batches += [
            members[j : j + options.batch_size] for j in range(0, len(members), options.batch_size)
        ]
    results: list[GenerationResult | None] = [None] * len(jobs)
    for chunk in tqdm(batches, desc=desc, leave=False):
        requests = [
            GenerationRequest(jobs[i].prompt, settings, adapter=jobs[i].adapter) for i in chunk
        ]
        for i, result in zip(chunk, engine.generate(requests, seed=options.seed), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]


def answer_all(
    engine: InferenceEngine,
    characters: dict[str, Character],
    items: list[Item],
    config: Config,
    options: EvalOptions,
    retriever: ExampleRetriever,
) -> None:
    """Fill `item.answers[setup]` for every item and set-up, in batches."""
    settings = SamplingSettings.from_config(
        config.generation, temperature=0.0, max_new_tokens=options.max_new_tokens
    )
    slots, jobs = [], []
    for item in items:
        character = characters[item.character]
        for setup in SETUPS:
            card = variant(character, setup)
            if setup == "card_retrieved":
                card = retriever.with_examples(card, item.turns[-1].content, RETRIEVED_EXAMPLES)
            prompt = build_prompt(
                card,
                item.turns[:-1],
                item.turns[-1],
                tokenizer=engine.tokenizer,
                budget=config.prompt.token_budget,
            )
            slots.append((item, setup))
            adapter = character.id if setup == "card_adapter" else None
            jobs.append(Job(prompt.text, adapter, group=f"{character.id}/{setup == 'base'}"))
    results = generate_all(engine, jobs, settings, options)
    for (item, setup), result in zip(slots, results, strict=True):
        item.answers[setup] = clean_character_reply(
            characters[item.character],
            result.text,
            cast=characters.values(),
            authors=[t.author for t in item.turns if t.role == "user"],
            hit_token_limit=result.hit_token_limit,
        )


class PhaseClock:
    """Seconds per phase of the run, logged as each ends (the report keeps them too)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 1)
        self._last = now
        log.info("%s: %.0f s", phase, self.seconds[phase])


def perplexity_under(
    engine: InferenceEngine, adapter: str | None, examples: list, batch_size: int
) -> float:
    with engine.using_adapter(adapter) as model:
        loss = mean_target_loss(model, examples, Recipe(batch_size=batch_size), engine.device)
    return math.exp(loss)


def run_eval(
    characters: list[Character],
    *,
    config: Config,
    out_dir: Path,
    options: EvalOptions,
    spc_path: Path | None = None,
    persona_chat_adapter: Path | None = None,
) -> dict[str, Any]:
    """Evaluate, write report.json / report.md / charts into `out_dir`, return the figures."""
    ids = [c.id for c in characters]
    root = config.characters_path
    skipped = check_inputs(characters, root, spc_path)  # before minutes of model work
    clock = PhaseClock()
    engine = load_engine(config, characters)
    clock.lap("load the model and adapters")

    items = collect_items(characters, root, options)
    encoder = load_encoder()
    by_id = {c.id: c for c in characters}
    answer_all(engine, by_id, items, config, options, ExampleRetriever(encoder, root))
    clock.lap("answers")

    report: dict[str, Any] = {
        "characters": ids,
        "setups": list(SETUPS),
        "options": options.__dict__,
    }
    report["attribution"] = attribution_section(encoder, ids, items, root, seed=options.seed)
    report["probes"] = probe_pass_rates(ids, items)
    report["reference"] = reference_metrics(ids, items, encoder)
    clock.lap("attribution and reference metrics")

    report["likelihood"] = likelihood_section(engine, characters, root, options)
    clock.lap("adapter likelihood")

    if skipped:
        report["skipped"] = skipped
    else:
        adapter = persona_chat_adapter or persona_chat.DEFAULT_ADAPTER
        report |= persona_chat_sections(engine, config, ids, spc_path, adapter, options)
        clock.lap("synthetic-persona-chat")
    report["seconds"] = clock.seconds
    report["samples"] = sample_answers(items)
    write_report(report, out_dir)
    return report


# -- the phases of run_eval --------------------------------------------------------------------

# The sections on Synthetic-Persona-Chat dialogues, as the report names them.
PERSONA_CHAT_SECTIONS = {
    "damage_guard": "Damage guard (Synthetic-Persona-Chat perplexity under each adapter)",
    "persona_chat": "Synthetic-Persona-Chat persona-injection protocol",
}


def check_inputs(characters: list[Character], root: Path, spc_path: Path | None) -> dict[str, str]:
    """Refuse, before any model work, a run that could only fail; log and return the sections
    it will skip (section -> why)."""
    missing = [c.id for c in characters if not c.has_adapter]
    if missing:
        raise EvalError(
            f"no adapter for {', '.join(missing)}: train one with `python -m finetune train ID`"
        )
    if not characters:
        raise EvalError(
            "no characters to evaluate: none has an adapter; train two or more with "
            "`python -m finetune train ID`"
        )
    for character in characters:
        files = DatasetFiles.of(root, character.id)
        for path in (files.train, files.eval):
            if not path.is_file():
                raise EvalError(
                    f"{path} is missing: build {character.id}'s data with "
                    f"`python -m finetune build --character {character.id} SOURCE...`"
                )
    # The attribution classifier tells characters apart by their training lines.
    with_lines = [c.id for c in characters if read_records(DatasetFiles.of(root, c.id).train)]
    if len(with_lines) < 2:
        without = [c.id for c in characters if c.id not in with_lines]
        got = ", ".join(with_lines) or "none"
        if without:
            got += f" (no training lines: {', '.join(without)})"
        raise EvalError(
            f"attribution needs at least 2 characters with training lines (data/train.jsonl); "
            f"got: {got}; give two or more character ids, or none for every character with "
            "an adapter"
        )
    skipped = skipped_persona_chat_sections(spc_path)
    if skipped:
        log.warning(
            "Synthetic-Persona-Chat sections skipped (damage guard, persona-injection "
            "protocol): %s",
            next(iter(skipped.values())),
        )
    return skipped


def skipped_persona_chat_sections(spc_path: Path | None) -> dict[str, str]:
    """Why the Synthetic-Persona-Chat sections cannot run (section -> reason); {} if they can."""
    if spc_path is not None and spc_path.exists():
        return {}
    where = "no CSV given" if spc_path is None else f"no file at {spc_path}"
    reason = f"{where}; pass the Synthetic-Persona-Chat CSV with `python -m finetune eval --spc`"
    return dict.fromkeys(PERSONA_CHAT_SECTIONS, reason)


def load_engine(config: Config, characters: list[Character]) -> InferenceEngine:
    engine = InferenceEngine.from_config(config)
    for character in characters:
        engine.load_adapter(character.id, character.adapter_path)
    return engine


def attribution_section(
    encoder: SentenceEncoder, ids: list[str], items: list[Item], root: Path, *, seed: int
) -> dict[str, Any]:
    """Who a classifier trained on the characters' training replies thinks said each answer."""
    training_lines = {
        c: [r.reply for r in read_records(DatasetFiles.of(root, c).train)] for c in ids
    }
    classifier = train_attribution(encoder, training_lines, seed=seed)
    held_out = [item for item in items if item.reference is not None]
    gold = [item.character for item in held_out]
    attribution: dict[str, Any] = {}
    for setup in SETUPS:
        answers = [item.answers[setup] or "..." for item in held_out]
        predicted = classifier.predict(encoder.encode(answers))
        attribution[setup] = {
            "accuracy": metrics.accuracy(predicted, gold),
            "per_character": {
                c: metrics.accuracy(
                    [p for p, g in zip(predicted, gold, strict=True) if g == c], [c] * gold.count(c)
                )
                for c in ids
            },
            "confusion": metrics.confusion_matrix(predicted, gold, ids),
        }
    return attribution


def probe_pass_rates(ids: list[str], items: list[Item]) -> dict[str, dict[str, float]]:
    """Per set-up, each character's rule-probe pass rate (characters without probes left out)."""
    probes: dict[str, dict[str, float]] = {setup: {} for setup in SETUPS}
    for setup in SETUPS:
        for c in ids:
            mine = [item for item in items if item.character == c and item.probe is not None]
            if mine:
                passed = sum(item.probe.passes(item.answers[setup]) for item in mine)
                probes[setup][c] = passed / len(mine)
    return probes


def reference_metrics(
    ids: list[str], items: list[Item], encoder: SentenceEncoder
) -> dict[str, dict[str, dict[str, float]]]:
    """Per set-up and character, the answers against the held-out replies."""
    reference: dict[str, dict[str, dict[str, float]]] = {setup: {} for setup in SETUPS}
    for setup in SETUPS:
        for c in ids:
            refs = [item for item in items if item.reference is not None and item.character == c]
            hyps = [item.answers[setup] for item in refs]
            golds = [item.reference for item in refs]
            reference[setup][c] = {
                "bleu": metrics.bleu(hyps, golds),
                "rouge_l": metrics.mean_rouge_l(hyps, golds),
                "similarity": encoder.mean_similarity(hyps, golds),
                "distinct_1": metrics.distinct_n(hyps, 1),
                "distinct_2": metrics.distinct_n(hyps, 2),
            }
    return reference


def likelihood_section(
    engine: InferenceEngine, characters: list[Character], root: Path, options: EvalOptions
) -> dict[str, Any]:
    """Each character's held-out lines under every adapter and none; hits@1: how often a
    character's own adapter fits its lines best."""
    ids = [c.id for c in characters]
    ppl: dict[str, dict[str, float]] = {}
    for character in characters:
        c = character.id
        records = read_records(DatasetFiles.of(root, c).eval)[: options.likelihood_lines]
        examples, _ = encode_all(
            records, character, engine.tokenizer, max_seq_len=LIKELIHOOD_MAX_SEQ_LEN
        )
        ppl[c] = {a: perplexity_under(engine, a, examples, options.batch_size) for a in ids}
        ppl[c]["base"] = perplexity_under(engine, None, examples, options.batch_size)
    hits = metrics.hits_at_1(
        [[ppl[c][a] for a in ids] for c in ids],
        [ids.index(c) for c in ids],
        higher_is_better=False,
    )
    return {"perplexity": ppl, "own_adapter_hits_at_1": hits}


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


def sample_answers(items: list[Item]) -> list[dict[str, str]]:
    """About a dozen items' prompts and answers, spread over the run."""
    return [
        {"character": item.character, "prompt": item.turns[-1].content, **item.answers}
        for item in items[:: max(1, len(items) // 12)]
    ]


def held_out_dialogues(spc_path: Path, count: int) -> tuple[list[Dialogue], list[Dialogue]]:
    """The first `count` held-out Synthetic-Persona-Chat dialogues, and all of them."""
    held_out = [d for d in persona_chat.read_dialogues(spc_path) if persona_chat.is_held_out(d)]
    return held_out[:count], held_out


def protocol_records(dialogues: list[Dialogue]) -> list[TrainingRecord]:
    """One User 2 turn per dialogue: the middle one, past the greetings and before the
    goodbyes, where the persona has something to say."""
    records = []
    for dialogue in dialogues:
        turns = persona_chat.next_turn_records(dialogue)
        records += turns[len(turns) // 2 : len(turns) // 2 + 1]
    return records


def encode_records(
    records: list[TrainingRecord], engine: InferenceEngine, *, persona: bool
) -> list[EncodedExample]:
    """Each record prompted as User 2, with its persona as the card or (not `persona`) none."""
    card = persona_chat.persona_card(None)
    if not persona:
        records = [dataclasses.replace(r, persona=None) for r in records]
    examples, _ = encode_all(records, card, engine.tokenizer, max_seq_len=PERSONA_CHAT_MAX_SEQ_LEN)
    return examples


def spc_damage_guard(
    engine: InferenceEngine, ids: list[str], dialogues: list[Dialogue], options: EvalOptions
) -> dict[str, float]:
    """Perplexity of a User 2 turn per dialogue, given its persona as the card, per adapter."""
    examples = encode_records(protocol_records(dialogues), engine, persona=True)
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
    results = generate_all(engine, jobs, settings, options, desc="persona-chat")
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
        examples = encode_records(scored, engine, persona=setup != "base")
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


# -- the report --------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# A figure with nothing to measure (no rule probes): not a 0 pass rate.
NOT_MEASURED = "n/a"


def headline_table(report: dict[str, Any]) -> str:
    rows = []
    for setup in report["setups"]:
        probes = report["probes"][setup]
        rows.append(
            [
                setup,
                report["attribution"][setup]["accuracy"],
                sum(probes.values()) / len(probes) if probes else NOT_MEASURED,
                sum(r["rouge_l"] for r in report["reference"][setup].values())
                / len(report["characters"]),
                sum(r["similarity"] for r in report["reference"][setup].values())
                / len(report["characters"]),
            ]
        )
    table = _table(["set-up", "attribution acc.", "rule probes", "ROUGE-L", "MiniLM sim."], rows)
    hits = report["likelihood"]["own_adapter_hits_at_1"]
    return f"{table}\n\nOwn adapter fits its character's held-out lines best (hits@1): {hits:.2f}"


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = report["characters"]
    charts(report, out_dir)
    ppl = report["likelihood"]["perplexity"]
    parts = [
        "# Persona-fidelity report\n",
        "Regenerate with `python -m finetune eval` (see the module docstring of "
        "`finetune/evaluate.py` for the set-ups). Greedy decoding, seeded.\n",
        "## Headline\n",
        headline_table(report) + "\n",
        "![attribution](attribution.png)\n",
        "## Attribution accuracy per character\n",
        _table(
            ["set-up", *ids],
            [
                [s, *(report["attribution"][s]["per_character"][c] for c in ids)]
                for s in report["setups"]
            ],
        )
        + "\n",
        "![confusion](confusion.png)\n",
        "## Rule probes (pass rate)\n",
        _table(
            ["set-up", *ids],
            [
                [s, *(report["probes"][s].get(c, NOT_MEASURED) for c in ids)]
                for s in report["setups"]
            ],
        )
        + "\n",
        "## Held-out lines: perplexity under each adapter (rows: whose lines)\n",
        _table(
            ["lines of", *ids, "base"],
            [[c, *(ppl[c][a] for a in ids), ppl[c]["base"]] for c in ids],
        )
        + "\n",
        "## Reference metrics (held-out replies)\n",
        _table(
            ["set-up", "character", "BLEU", "ROUGE-L", "MiniLM sim.", "distinct-1", "distinct-2"],
            [[s, c, *report["reference"][s][c].values()] for s in report["setups"] for c in ids],
        )
        + "\n",
    ]
    if report.get("skipped"):
        parts.append("## Skipped sections\n")
        parts += [
            f"- {PERSONA_CHAT_SECTIONS.get(section, section)}: skipped: {reason}"
            for section, reason in report["skipped"].items()
        ]
        parts.append("")
    if "damage_guard" in report:
        guard = report["damage_guard"]
        parts += [
            "## Damage guard: Synthetic-Persona-Chat perplexity (persona as the card)\n",
            "User 2's middle turn of held-out dialogues under each character's adapter: an "
            "adapter that broke general dialogue would score worse than the base.\n",
            _table(
                ["adapter", "perplexity"], [[k, v] for k, v in guard.items() if k != "dialogues"]
            )
            + f"\n\n{guard['dialogues']} dialogues.\n",
        ]
    if "persona_chat" in report:
        spc = report["persona_chat"]
        setups = [s for s in PERSONA_SETUPS if s in spc]
        parts += [
            "## Synthetic-Persona-Chat: the persona-injection protocol\n",
            f"User 2's middle turn of {spc['dialogues']} held-out dialogues, given up to 4 "
            "turns of context: "
            "`base` without a persona, `persona` with User 2's persona as the card, "
            "`persona_adapter` with that and the adapter `python -m finetune train-persona-chat` "
            "trained on other dialogues. hits@1: the real turn ranked first among "
            f"{spc['candidates']} candidates (the others are User 2 turns of other held-out "
            "dialogues) by mean loss per token.\n",
            _table(
                ["set-up", "BLEU", "ROUGE-L", "MiniLM sim.", "hits@1"],
                [
                    [s, *(spc[s][k] for k in ("bleu", "rouge_l", "similarity", "hits_at_1"))]
                    for s in setups
                ],
            )
            + "\n",
        ]
        for sample in spc["samples"]:
            parts.append(f"User 1: {sample['context']}\n")
            parts.append(f"- real: {sample['gold']}")
            parts += [f"- {s}: {sample[s]}" for s in setups]
            parts.append("")
    parts.append("## Sample answers\n")
    for sample in report["samples"]:
        parts.append(f"**{sample['character']}** ← {sample['prompt']}\n")
        for setup in report["setups"]:
            parts.append(f"- {setup}: {sample.get(setup, '')}")
        parts.append("")
    _write(out_dir / "report.md", "\n".join(parts) + "\n")
    _write(out_dir / "report.json", json.dumps(report, indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def charts(report: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids, setups = report["characters"], report["setups"]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    width = 0.8 / len(setups)
    for i, setup in enumerate(setups):
        values = [report["attribution"][setup]["per_character"][c] for c in ids]
        ax.bar([x + i * width for x in range(len(ids))], values, width, label=setup)
    ax.set_xticks([x + width * (len(setups) - 1) / 2 for x in range(len(ids))], ids)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attribution accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "attribution.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), dpi=100)
    for ax, setup in zip(axes, ("card_few_shot", "card_adapter"), strict=True):
        matrix = report["attribution"][setup]["confusion"]
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(ids)), ids, rotation=45)
        ax.set_yticks(range(len(ids)), ids)
        ax.set_xlabel("predicted")
        ax.set_ylabel("speaker")
        ax.set_title(setup)
        for r, row in enumerate(matrix):
            for c, value in enumerate(row):
                ax.text(c, r, str(value), ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png")
    plt.close(fig)

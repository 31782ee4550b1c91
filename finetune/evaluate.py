"""`python -m finetune eval`: does each adapter make its character more itself?

Per character, on prompts none of the adapters trained on (its `eval.jsonl` and rule probes),
five prompt set-ups answer with greedy decoding:

    base            the base model told only the character's name
    card_zero_shot  the full card (persona, style, rules), no example dialogues
    card_few_shot   the card and its example dialogues: what the bot sends without an adapter
    card_retrieved  the card with the character's training lines closest to the message as
                    examples (`prompt.examples: retrieved`), no adapter
    card_adapter    the same prompt, through the character's LoRA adapter

then four more add the serving levers to card_adapter through the bot's own Responder (rule
guards, 4 candidates picked by the persona score, persona guidance g = 1.5, and all of them;
see `finetune/eval_levers.py`). The report measures: who a MiniLM + logistic-regression
classifier (trained on the characters' training lines) thinks is speaking; the rule probes'
pass rate; BLEU, ROUGE-L, embedding similarity and distinct-n against the held-out replies;
each character's held-out lines scored under every adapter (perplexity; the own adapter should
fit best); and perplexity on Synthetic-Persona-Chat dialogues with and without each adapter
(general damage guard).
Attribution accuracy and rule-probe pass rates come with bootstrap intervals over the items;
`finetune/eval_report.py` computes those and writes report.md, report.json and the charts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.characters import Character
from bot.config import Config
from bot.context import PromptAssembler
from bot.embeddings import SentenceEncoder, load_encoder
from bot.engine import InferenceEngine, SamplingSettings
from bot.example_retrieval import ExampleRetriever
from bot.files import write_files_atomically
from bot.history import Turn
from bot.responder import clean_character_reply
from bot.training_data import DatasetFiles, read_records
from finetune import metrics, persona_chat
from finetune.attribution import train_attribution
from finetune.batch_generate import Job, generate_all
from finetune.errors import FinetuneError
from finetune.eval_levers import LEVER_SETUPS, answer_with_levers, guard_actions
from finetune.eval_lore import run_lore
from finetune.eval_persona_chat import persona_chat_sections
from finetune.eval_report import (
    PERSONA_CHAT_SECTIONS,
    _table,
    confidence_intervals,
    write_report,
)
from finetune.examples import EncodedExample, encode_all
from finetune.losses import perplexity_under
from finetune.probes import Probe, character_probes
from finetune.recipe import Recipe

log = logging.getLogger(__name__)


class EvalError(FinetuneError):
    pass


# Set-ups that differ in the prompt (and adapter), answered greedily straight by the engine ...
PROMPT_SETUPS = ("base", "card_zero_shot", "card_few_shot", "card_retrieved", "card_adapter")
# ... and the serving levers on top of card_adapter, answered by the bot's Responder.
SETUPS = (*PROMPT_SETUPS, *LEVER_SETUPS)
RETRIEVED_EXAMPLES = 4
# A character's held-out lines are scored as its adapter was trained on them: encoded within the
# recipe's default max_seq_len (1536), the length the character recipes train at.
LIKELIHOOD_MAX_SEQ_LEN: int = Recipe.model_fields["max_seq_len"].default


@dataclass(frozen=True)
class EvalOptions:
    # Running ~1000-token prompts dominates: with 8 prompts per character these defaults took
    # about 14 minutes on a 2-core CPU; with 24 the time is not measured yet, and is longer (the
    # phases' seconds are in report.json).
    prompts: int = 24  # held-out prompts per character
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
    actions: dict[str, str] = field(default_factory=dict)  # lever set-up -> guard action


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


def prompt_setup_adapter(character_id: str, setup: str) -> str | None:
    """The engine adapter a prompt set-up answers under: the character's own for card_adapter."""
    return character_id if setup == "card_adapter" else None


def answer_all(
    engine: InferenceEngine,
    characters: dict[str, Character],
    items: list[Item],
    config: Config,
    options: EvalOptions,
    retriever: ExampleRetriever | None,
    *,
    assembler: PromptAssembler,
    setups: Sequence[str] = PROMPT_SETUPS,
    adapter_of: Callable[[str, str], str | None] = prompt_setup_adapter,
) -> None:
    """Fill `item.answers[setup]` for every item and set-up, in batches. `adapter_of(character
    id, set-up)` names the engine adapter of each; a set-up other than PROMPT_SETUPS prompts
    as card_adapter does (the full card; `variant`), and only card_retrieved needs `retriever`.
    Prompts come from `assembler`, as the bot's (with the lore a message fires; not for base,
    which has no card)."""
    settings = SamplingSettings.from_config(
        config.generation, temperature=0.0, max_new_tokens=options.max_new_tokens
    )
    slots, jobs = [], []
    for item in items:
        character = characters[item.character]
        for setup in setups:
            card = variant(character, setup)
            if setup == "card_retrieved":
                if retriever is None:
                    raise ValueError("answer_all: card_retrieved needs a retriever")
                card = retriever.with_examples(card, item.turns[-1].content, RETRIEVED_EXAMPLES)
            prompt = assembler.build(card, item.turns[:-1], item.turns[-1], lore=setup != "base")
            slots.append((item, setup))
            adapter = adapter_of(character.id, setup)
            jobs.append(Job(prompt.text, adapter, group=f"{character.id}/{setup == 'base'}"))
    results = generate_all(engine, jobs, settings, batch_size=options.batch_size, seed=options.seed)
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
    assembler = PromptAssembler.from_config(engine.tokenizer, config, characters)
    retriever = ExampleRetriever(encoder, root)
    answer_all(engine, by_id, items, config, options, retriever, assembler=assembler)
    clock.lap("answers")
    answer_with_levers(engine, by_id, items, config, options, assembler=assembler)
    clock.lap("answers with the serving levers")
    lore = run_lore(characters, engine=engine, config=config, options=options)
    clock.lap("lore questions")

    report: dict[str, Any] = {
        "characters": ids,
        "setups": list(SETUPS),
        "options": options.__dict__,
        "lore": lore,
    }
    report["attribution"], attribution_outcomes = attribution_section(
        encoder, ids, items, root, seed=options.seed
    )
    rule_outcomes = probe_outcomes(ids, items)
    report["probes"] = pass_rates(rule_outcomes)
    outcomes = {"attribution": attribution_outcomes, "probes": rule_outcomes}
    report["intervals"] = confidence_intervals(outcomes)
    report["guard_actions"] = guard_actions(items)
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
    report["outcomes"] = outcomes  # per item: what the intervals resample
    write_report(report, out_dir)
    return report


# -- the phases of run_eval --------------------------------------------------------------------


def check_inputs(
    characters: list[Character],
    root: Path,
    spc_path: Path | None,
    *,
    with_persona_chat: bool = True,
) -> dict[str, str]:
    """Refuse, before any model work, a run that could only fail; log and return the sections
    it will skip (section -> why). Without `with_persona_chat` (a run of one section) the
    Synthetic-Persona-Chat sections are not checked."""
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
    check_data(characters, root)
    if not with_persona_chat:
        return {}
    skipped = skipped_persona_chat_sections(spc_path)
    if skipped:
        log.warning(
            "Synthetic-Persona-Chat sections skipped (damage guard, persona-injection "
            "protocol): %s",
            next(iter(skipped.values())),
        )
    return skipped


def check_data(characters: list[Character], root: Path) -> None:
    """Refuse characters without built data, and fewer than 2 with training lines (the
    attribution classifier tells characters apart by them)."""
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


def skipped_persona_chat_sections(
    spc_path: Path | None, *, command: str = "eval"
) -> dict[str, str]:
    """Why the Synthetic-Persona-Chat sections cannot run (section -> reason); {} if they can.
    `command`: the finetune subcommand whose --spc the reason points at."""
    if spc_path is not None and spc_path.exists():
        return {}
    where = "no CSV given" if spc_path is None else f"no file at {spc_path}"
    reason = (
        f"{where}; pass the Synthetic-Persona-Chat CSV with `python -m finetune {command} --spc`"
    )
    return dict.fromkeys(PERSONA_CHAT_SECTIONS, reason)


def load_engine(config: Config, characters: list[Character]) -> InferenceEngine:
    engine = InferenceEngine.from_config(config)
    for character in characters:
        engine.load_adapter(character.id, character.adapter_path)
    return engine


def attribution_section(
    encoder: SentenceEncoder,
    ids: list[str],
    items: list[Item],
    root: Path,
    *,
    seed: int,
    setups: Sequence[str] = SETUPS,
) -> tuple[dict[str, Any], dict[str, dict[str, list[int]]]]:
    """Who a classifier trained on the characters' training replies thinks said each answer:
    per set-up, the accuracy (all and per character) and the confusion matrix; and the
    outcomes they come from: per set-up and character, 1 where the classifier named the
    character, else 0, per held-out answer in item order."""
    training_lines = {
        c: [r.reply for r in read_records(DatasetFiles.of(root, c).train)] for c in ids
    }
    classifier = train_attribution(encoder, training_lines, seed=seed)
    held_out = [item for item in items if item.reference is not None]
    gold = [item.character for item in held_out]
    attribution: dict[str, Any] = {}
    outcomes: dict[str, dict[str, list[int]]] = {}
    for setup in setups:
        answers = [item.answers[setup] or "..." for item in held_out]
        predicted = classifier.predict(encoder.encode(answers))
        right = [int(p == g) for p, g in zip(predicted, gold, strict=True)]
        outcomes[setup] = {c: [r for r, g in zip(right, gold, strict=True) if g == c] for c in ids}
        attribution[setup] = {
            "accuracy": _rate(right),
            "per_character": {c: _rate(outcomes[setup][c]) for c in ids},
            "confusion": metrics.confusion_matrix(predicted, gold, ids),
        }
    return attribution, outcomes


def _rate(outcomes: list[int]) -> float:
    """The fraction of 1s; 0.0 for none (as `metrics.accuracy`)."""
    return sum(outcomes) / len(outcomes) if outcomes else 0.0


def probe_outcomes(
    ids: list[str], items: list[Item], setups: Sequence[str] = SETUPS
) -> dict[str, dict[str, list[int]]]:
    """Per set-up and character, 1 where the answer passed the rule probe, else 0, per probe in
    item order (characters without probes left out)."""
    outcomes: dict[str, dict[str, list[int]]] = {setup: {} for setup in setups}
    for setup in setups:
        for c in ids:
            mine = [item for item in items if item.character == c and item.probe is not None]
            if mine:
                outcomes[setup][c] = [int(item.probe.passes(item.answers[setup])) for item in mine]
    return outcomes


def pass_rates(outcomes: dict[str, dict[str, list[int]]]) -> dict[str, dict[str, float]]:
    """Per set-up, each character's rule-probe pass rate, from `probe_outcomes`."""
    return {
        setup: {c: _rate(o) for c, o in by_character.items()}
        for setup, by_character in outcomes.items()
    }


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
        examples = held_out_examples(engine, character, root, options)
        ppl[c] = {a: perplexity_under(engine, a, examples, options.batch_size) for a in ids}
        ppl[c]["base"] = perplexity_under(engine, None, examples, options.batch_size)
    hits = metrics.hits_at_1(
        [[ppl[c][a] for a in ids] for c in ids],
        [ids.index(c) for c in ids],
        higher_is_better=False,
    )
    return {"perplexity": ppl, "own_adapter_hits_at_1": hits}


def held_out_examples(
    engine: InferenceEngine, character: Character, root: Path, options: EvalOptions
) -> list[EncodedExample]:
    """The character's first `options.likelihood_lines` held-out lines, encoded as its adapter
    trained on them (LIKELIHOOD_MAX_SEQ_LEN)."""
    records = read_records(DatasetFiles.of(root, character.id).eval)[: options.likelihood_lines]
    examples, _ = encode_all(
        records, character, engine.tokenizer, max_seq_len=LIKELIHOOD_MAX_SEQ_LEN
    )
    return examples


def run_likelihood(
    characters: list[Character],
    *,
    config: Config,
    options: EvalOptions,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """`python -m finetune eval --only likelihood`: the adapter-likelihood section alone, in
    minutes: no answers are generated and no report is written; with `out_dir`, its figures
    go to likelihood.json there."""
    if len(characters) < 2:
        raise EvalError(
            "own-adapter hits@1 compares adapters: give two or more characters with adapters"
        )
    check_inputs(characters, config.characters_path, None, with_persona_chat=False)
    engine = load_engine(config, characters)
    section = likelihood_section(engine, characters, config.characters_path, options)
    if out_dir is not None:
        figures = {
            "characters": [c.id for c in characters],
            "likelihood_lines": options.likelihood_lines,
            **section,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        write_files_atomically({out_dir / "likelihood.json": json.dumps(figures, indent=2) + "\n"})
    return section


def likelihood_table(section: dict[str, Any], ids: list[str]) -> str:
    """`likelihood_section`'s figures as Markdown: the report's perplexity table and hits@1."""
    ppl = section["perplexity"]
    table = _table(
        ["lines of", *ids, "base"], [[c, *(ppl[c][a] for a in ids), ppl[c]["base"]] for c in ids]
    )
    hits = section["own_adapter_hits_at_1"]
    return f"{table}\n\nOwn adapter fits its character's held-out lines best (hits@1): {hits:.2f}"


def sample_answers(items: list[Item]) -> list[dict[str, str]]:
    """About a dozen items' prompts and answers, spread over the run."""
    return [
        {"character": item.character, "prompt": item.turns[-1].content, **item.answers}
        for item in items[:: max(1, len(items) // 12)]
    ]

"""`python -m finetune eval-adapters`: two adapter versions of each character, side by side.

Each character named is answered and scored under its `before` adapter (default
`characters/<id>/adapter`, the SFT one) and its `after` adapter (default `adapter-dpo`, what
`python -m finetune train ID --method dpo --out characters/ID/adapter-dpo` writes), with the
measures of `python -m finetune eval` (finetune/evaluate.py), reused, not re-implemented:

    probes        the rule probes (finetune/probes.py) answered greedily with the card_adapter
                  prompt and settings, no guards -> pass rate
    attribution   the report's MiniLM + logistic-regression judge, trained as run_eval trains it
                  (on the cast's training lines), on the held-out prompts answered the same way
                  -> share attributed to the right character, and after - before (paired)
    likelihood    perplexity of the held-out lines under each adapter, and own-adapter hits@1
                  within the cast: once with every before adapter, once with every after one
    damage guard  Synthetic-Persona-Chat perplexity with each adapter (vs none): after/before,
                  whose target is at most DAMAGE_TARGET

The cast is the characters compared plus every other character that has a `before` adapter
and built data: the judge tells all of them apart and hits@1 ranks all their adapters (one
without an `after` adapter takes part in the after cast with its before one). Rates carry the
report's 95% percentile-bootstrap intervals over items (finetune/eval_report.py); perplexities
have none there, so none here. Writes adapters.md and adapters.json.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bot.characters import ADAPTER_DIR, Character
from bot.config import Config
from bot.context import PromptAssembler
from bot.embeddings import load_encoder
from bot.engine import InferenceEngine
from bot.training_data import DatasetFiles
from finetune import metrics
from finetune.eval_adapters_report import DAMAGE_TARGET, VERSIONS, write_adapter_report
from finetune.eval_persona_chat import held_out_dialogues, spc_damage_guard
from finetune.eval_report import (
    BOOTSTRAP_LEVEL,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    confidence_intervals,
    paired_difference,
)
from finetune.evaluate import (
    EvalError,
    EvalOptions,
    PhaseClock,
    answer_all,
    attribution_section,
    check_data,
    collect_items,
    held_out_examples,
    probe_outcomes,
    sample_answers,
    skipped_persona_chat_sections,
)
from finetune.losses import perplexity_under
from finetune.probes import character_probes

log = logging.getLogger(__name__)

DEFAULT_BEFORE = ADAPTER_DIR  # the SFT adapter `python -m finetune train ID` writes
DEFAULT_AFTER = "adapter-dpo"
AFTER_SUFFIX = "+after"  # engine key of a character's after adapter: "<id>+after"
# More probes than any character ships: a full run answers every probe (EvalOptions.probes is
# the report's cap of 10; the shipped characters have 8-9).
ALL_PROBES = 1000


class EvalAdaptersError(EvalError):
    pass


def default_options(*, quick: bool = False, prompts: int | None = None) -> EvalOptions:
    """The report's options (or its `--quick` ones); a full run answers every rule probe."""
    options = EvalOptions.quick() if quick else EvalOptions(probes=ALL_PROBES)
    return dataclasses.replace(options, prompts=prompts) if prompts else options


def engine_key(character_id: str, version: str) -> str:
    """The engine adapter name of a character's before (its id) or after adapter."""
    return character_id if version == "before" else character_id + AFTER_SUFFIX


def adapter_folder(root: Path, character_id: str, name: str) -> Path:
    return root / character_id / name


def _how_to_make(character_id: str, version: str, name: str, root: Path) -> str:
    out = "" if name == DEFAULT_BEFORE else f" --out {adapter_folder(root, character_id, name)}"
    dpo = " --method dpo" if version == "after" else ""
    return f"`python -m finetune train {character_id}{dpo}{out}`"


def check_adapters(
    characters: list[Character], root: Path, before: str, after: str
) -> dict[str, dict[str, Path]]:
    """Each character's before and after adapter folders (character -> version -> folder);
    refuse, before the model loads, bad folder names and a missing adapter, naming the path and
    the command that makes it."""
    if not characters:
        raise EvalAdaptersError("no characters to compare: give one or more character ids")
    for version, name in (("before", before), ("after", after)):
        if not name or Path(name).name != name or name in (".", ".."):
            raise EvalAdaptersError(
                f"--{version} {name!r}: give the name of a folder inside characters/<id>/ "
                f"(e.g. {DEFAULT_BEFORE} or {DEFAULT_AFTER}), not a path"
            )
    if before == after:
        raise EvalAdaptersError(
            f"--before and --after are both {before!r}: give two different adapter folders"
        )
    folders: dict[str, dict[str, Path]] = {}
    for character in characters:
        c = character.id
        folders[c] = {}
        for version, name in (("before", before), ("after", after)):
            path = adapter_folder(root, c, name)
            if not path.is_dir():
                raise EvalAdaptersError(
                    f"{path}: no such folder, so no {version} adapter for {c}; make it with "
                    f"{_how_to_make(c, version, name, root)}"
                )
            if not (path / "adapter_config.json").is_file():
                raise EvalAdaptersError(
                    f"{path}: not an adapter (no adapter_config.json); make it with "
                    f"{_how_to_make(c, version, name, root)}"
                )
            folders[c][version] = path
    return folders


def cast_of(
    characters: list[Character], others: Iterable[Character], root: Path, before: str
) -> list[Character]:
    """The characters compared, then every other one with a `before` adapter and built data
    (sorted by id)."""
    ids = {c.id for c in characters}
    cast = list(characters)
    for other in sorted(others, key=lambda c: c.id):
        if other.id in ids:
            continue
        files = DatasetFiles.of(root, other.id)
        has_adapter = (adapter_folder(root, other.id, before) / "adapter_config.json").is_file()
        if has_adapter and files.train.is_file() and files.eval.is_file():
            cast.append(other)
            ids.add(other.id)
        elif has_adapter:
            log.info("%s is left out of the cast: no built data (train/eval.jsonl)", other.id)
    return cast


def load_adapters(
    engine: InferenceEngine,
    cast: list[Character],
    folders: dict[str, dict[str, Path]],
    root: Path,
    before: str,
) -> None:
    """Every cast member's before adapter under its id; each compared character's after
    adapter under `<id>+after`."""
    for character in cast:
        path = folders.get(character.id, {}).get("before")
        engine.load_adapter(character.id, path or adapter_folder(root, character.id, before))
    for c, by_version in folders.items():
        engine.load_adapter(engine_key(c, "after"), by_version["after"])


def run_eval_adapters(
    characters: list[Character],
    *,
    config: Config,
    out_dir: Path,
    options: EvalOptions,
    before: str = DEFAULT_BEFORE,
    after: str = DEFAULT_AFTER,
    others: Iterable[Character] = (),
    spc_path: Path | None = None,
    engine: InferenceEngine | None = None,
) -> dict[str, Any]:
    """Compare each character's `before` and `after` adapters; write adapters.md and
    adapters.json into `out_dir` and return the figures. `others`: the rest of the characters
    (those with a `before` adapter join the cast); `engine`: one already loaded (else the
    configured model is loaded, once)."""
    root = config.characters_path
    folders = check_adapters(characters, root, before, after)  # before minutes of model work
    ids = [c.id for c in characters]
    cast = cast_of(characters, others, root, before)
    try:
        check_data(cast, root)
    except EvalError as exc:
        raise EvalAdaptersError(
            f"{exc} (the cast here: {', '.join(c.id for c in cast)}: the characters compared "
            f"and every other character with a {before}/ adapter and built data)"
        ) from None
    skipped = skipped_persona_chat_sections(spc_path, command="eval-adapters")
    clock = PhaseClock()
    if engine is None:
        engine = InferenceEngine.from_config(config)
    load_adapters(engine, cast, folders, root, before)
    clock.lap("load the model and adapters")

    items = collect_items(characters, root, options)
    by_id = {c.id: c for c in cast}
    answer_all(
        engine,
        by_id,
        items,
        config,
        options,
        None,
        assembler=PromptAssembler.from_config(engine.tokenizer, config, cast),
        setups=VERSIONS,
        adapter_of=engine_key,
    )
    clock.lap("answers")

    cast_ids = [c.id for c in cast]
    report: dict[str, Any] = {
        "characters": ids,
        "cast": cast_ids,
        "before": before,
        "after": after,
        "adapters": {
            c: {v: str(p) for v, p in by_version.items()} for c, by_version in folders.items()
        },
        "options": dataclasses.asdict(options),
    }
    judged, judged_outcomes = attribution_section(
        load_encoder(), cast_ids, items, root, seed=options.seed, setups=VERSIONS
    )
    outcomes = {
        "probes": probe_outcomes(ids, items, VERSIONS),
        "attribution": {v: {c: judged_outcomes[v][c] for c in ids} for v in VERSIONS},
    }
    intervals = confidence_intervals(outcomes)
    report["probes"] = probes_section(characters, root, outcomes["probes"], intervals)
    report["attribution"] = attribution_comparison(ids, judged, outcomes["attribution"], intervals)
    clock.lap("probes and attribution")

    report["likelihood"] = likelihood_comparison(engine, cast, ids, root, options)
    clock.lap("held-out likelihood")

    if skipped:
        report["skipped"] = {"damage_guard": next(iter(skipped.values()))}
        log.warning("SPC damage guard skipped: %s", report["skipped"]["damage_guard"])
    else:
        report["damage_guard"] = damage_guard_comparison(engine, ids, spc_path, options)
        clock.lap("synthetic-persona-chat damage guard")
    report["intervals"] = {
        "method": "percentile bootstrap of the mean over items; differences paired",
        "level": BOOTSTRAP_LEVEL,
        "resamples": BOOTSTRAP_RESAMPLES,
        "seed": BOOTSTRAP_SEED,
    }
    report["seconds"] = clock.seconds
    report["samples"] = sample_answers(items)
    report["outcomes"] = outcomes  # per item: what the intervals resample
    write_adapter_report(report, out_dir)
    return report


# -- the sections ------------------------------------------------------------------------------


def _rates(
    outcomes: dict[str, dict[str, list[int]]], intervals: dict[str, Any], c: str
) -> dict[str, Any]:
    """One character's before and after rates, their intervals and the paired difference."""
    figures: dict[str, Any] = {}
    for version in VERSIONS:
        mine = outcomes[version][c]
        figures[version] = sum(mine) / len(mine) if mine else None
        figures[f"{version}_interval"] = intervals[version]["per_character"].get(c)
    figures["after_minus_before"] = paired_difference(outcomes["before"][c], outcomes["after"][c])
    return figures


def probes_section(
    characters: list[Character],
    root: Path,
    outcomes: dict[str, dict[str, list[int]]],
    intervals: dict[str, Any],
) -> dict[str, Any]:
    """Per character: rule-probe pass rates before and after (no guards), or why none."""
    section: dict[str, Any] = {}
    for character in characters:
        c = character.id
        shipped = len(character_probes(root, c))
        if c not in outcomes["before"]:
            section[c] = {"probes": 0, "of": shipped, "note": "no probes"}
            continue
        answered = len(outcomes["before"][c])
        section[c] = {"probes": answered, "of": shipped, **_rates(outcomes, intervals["probes"], c)}
    return section


def attribution_comparison(
    ids: list[str],
    judge: dict[str, Any],
    outcomes: dict[str, dict[str, list[int]]],
    intervals: dict[str, Any],
) -> dict[str, Any]:
    """Per character and pooled: the share of held-out answers the judge gave the right
    character, before and after; the judge's confusion matrices over the cast."""
    per_character: dict[str, Any] = {}
    for c in ids:
        prompts = len(outcomes["before"][c])
        if not prompts:
            per_character[c] = {"prompts": 0, "note": "no held-out prompts (data/eval.jsonl)"}
            continue
        per_character[c] = {"prompts": prompts, **_rates(outcomes, intervals["attribution"], c)}
    pooled = {v: [o for c in ids for o in outcomes[v][c]] for v in VERSIONS}
    all_items: dict[str, Any] = {"prompts": len(pooled["before"])}
    for version in VERSIONS:
        all_items[version] = judge[version]["accuracy"] if pooled[version] else None
        all_items[f"{version}_interval"] = intervals["attribution"][version]["all"]
    all_items["after_minus_before"] = paired_difference(pooled["before"], pooled["after"])
    return {
        "per_character": per_character,
        "all": all_items,
        "confusion": {v: judge[v]["confusion"] for v in VERSIONS},
    }


def likelihood_comparison(
    engine: InferenceEngine,
    cast: list[Character],
    ids: list[str],
    root: Path,
    options: EvalOptions,
) -> dict[str, Any]:
    """Every cast member's held-out lines under every cast adapter (before and after) and, for
    the characters compared, none; own-adapter hits@1 within the before cast and within the
    after cast (whose members without an after adapter keep their before one)."""
    cast_ids = [c.id for c in cast]
    columns = {
        "before": {a: a for a in cast_ids},
        "after": {a: engine_key(a, "after") if a in ids else a for a in cast_ids},
    }
    keys = list(dict.fromkeys([*columns["before"].values(), *columns["after"].values()]))
    ppl: dict[str, dict[str, float]] = {}
    lines: dict[str, int] = {}
    for character in cast:
        examples = held_out_examples(engine, character, root, options)
        lines[character.id] = len(examples)
        if not examples:
            continue
        ppl[character.id] = {
            k: perplexity_under(engine, k, examples, options.batch_size) for k in keys
        }
        if character.id in ids:
            ppl[character.id]["base"] = perplexity_under(engine, None, examples, options.batch_size)
    rows = [c for c in cast_ids if c in ppl]

    def own_best(c: str, version: str) -> bool:
        scores = [ppl[c][columns[version][a]] for a in cast_ids]
        return metrics.hits_at_1([scores], [cast_ids.index(c)], higher_is_better=False) == 1.0

    per_character: dict[str, Any] = {}
    for c in ids:
        if c not in ppl:
            per_character[c] = {"lines": 0, "note": "no held-out lines (data/eval.jsonl)"}
            continue
        b, a = ppl[c][c], ppl[c][engine_key(c, "after")]
        per_character[c] = {
            "lines": lines[c],
            "base": ppl[c]["base"],
            "before": b,
            "after": a,
            "after_over_before": a / b,
            "own_best_before": own_best(c, "before"),
            "own_best_after": own_best(c, "after"),
        }
    hits = {
        version: sum(own_best(c, version) for c in rows) / len(rows) if rows else None
        for version in VERSIONS
    }
    return {
        "lines": lines,
        "per_character": per_character,
        "own_adapter_hits_at_1": hits,
        "hits_rows": rows,
        "after_uses_before": [c for c in cast_ids if c not in ids],
        "perplexity": ppl,  # row: whose lines; column: engine adapter key (`<id>+after`), base
    }


def damage_guard_comparison(
    engine: InferenceEngine, ids: list[str], spc_path: Path, options: EvalOptions
) -> dict[str, Any]:
    """The report's damage guard (a User 2 turn of held-out Synthetic-Persona-Chat dialogues,
    persona as the card) under each character's before and after adapter: after/before."""
    dialogues, _ = held_out_dialogues(spc_path, options.spc_dialogues)
    keys = [engine_key(c, v) for c in ids for v in VERSIONS]
    guard = spc_damage_guard(engine, keys, dialogues, options)
    per_character = {}
    for c in ids:
        b, a = guard[engine_key(c, "before")], guard[engine_key(c, "after")]
        ratio = a / b
        per_character[c] = {
            "before": b,
            "after": a,
            "after_over_before": ratio,
            "within_target": ratio <= DAMAGE_TARGET,
        }
    return {
        "dialogues": guard["dialogues"],
        "base": guard["base"],
        "target": DAMAGE_TARGET,
        "per_character": per_character,
    }

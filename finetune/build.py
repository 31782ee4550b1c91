"""`python -m finetune build`: dialogue sources -> train/eval JSONL for one character.

Steps:
  1. The character: a card source (.json/.png) or `--spc-row` first writes
     `characters/<id>/character.yaml` when it does not exist (or with `--force`); then the
     character `--character ID` is loaded. A line is the character's when its speaker equals
     the card's name or an alias or a `--speaker` name (case-insensitive). Its lines are shown
     under the card's name; everyone else is the user side, names kept.
  2. Sources (files, or folders searched recursively for supported extensions) are parsed into
     scenes (`finetune.sources`, `finetune.cards`), and lines are cleaned and filtered
     (`finetune.cleaning`).
  3. Turns, examples and the split: `finetune.scene_examples`. The split holds out whole scene
     groups among those the character speaks in, picked in a seeded hash order until they hold
     about `--eval-fraction` of its examples (`SPLIT_RULE`, recorded in the dataset card).
  4. train.jsonl, eval.jsonl (`bot.training_data.TrainingRecord` lines) and the dataset card
     (`finetune.dataset_card`) are written to temporary files in the output folder and only
     then renamed over the old ones: a failure leaves the previous files as they were.

A record's `id` is a hash of scene, source and reply, stable across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.characters import Character, CharacterError, CharacterRegistry
from bot.files import write_files_atomically
from bot.training_data import DatasetFiles, TrainingRecord, records_text
from finetune import cards, cleaning
from finetune.dataset_card import card_markdown, dropped_summary, split_warnings
from finetune.scene_examples import SPLIT_RULE, filter_examples, make_examples, split_examples
from finetune.sources import (
    CARD_EXTENSIONS,
    SPC_SPEAKERS,
    SUPPORTED_EXTENSIONS,
    BuildError,
    Dropped,
    ParsedSource,
    ParseOptions,
    Scene,
    parse_source,
    pick_spc_row,
    read_spc_rows,
    renpy_definitions,
    source_kind,
    spc_speaker,
)

__all__ = ["BuildError", "BuildOptions", "BuildResult", "add_build_arguments", "run_build"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build needs; the fields are the options of `python -m finetune build`."""

    sources: tuple[Path, ...]
    character: str
    speakers: tuple[str, ...] = ()  # more names (or Ren'Py variables) that are the character
    characters_dir: Path | None = None  # default: characters_dir from the config
    out: Path | None = None  # default: the character's data folder
    context_turns: int = 6
    max_turn_chars: int = 600
    min_reply_chars: int = 2
    near_dup_threshold: float = 0.9
    drop_patterns: tuple[str, ...] = ()
    eval_fraction: float = 0.1
    seed: int = 0
    scene_gap: float = 10.0
    scene_speeches: int = ParseOptions.scene_speeches
    renpy_player: str = "Player"
    renpy_narration: str = "keep"
    spc_speaker: str = "User 2"
    spc_row: int | None = None
    name: str | None = None  # display name of a card written from --spc-row
    force: bool = False
    count_tokens: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise BuildError(f"--eval-fraction {self.eval_fraction}: allowed: 0 to under 1")
        if self.context_turns < 1:
            raise BuildError(f"--context-turns {self.context_turns}: allowed: 1 or more")
        if self.max_turn_chars < 1 or self.min_reply_chars < 0:
            raise BuildError("--max-turn-chars must be 1 or more and --min-reply-chars 0 or more")
        if self.scene_speeches < 0:
            raise BuildError(
                f"--scene-speeches {self.scene_speeches}: allowed: 0 (no limit) or more"
            )
        if self.scene_gap <= 0:
            raise BuildError(f"--scene-gap {self.scene_gap}: allowed: more than 0 seconds")
        if self.renpy_narration not in ("keep", "drop"):
            raise BuildError(f"--renpy-narration {self.renpy_narration!r}: allowed: keep, drop")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BuildOptions:
        """The options of a command line parsed by a parser with `add_build_arguments`."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        for name in ("sources", "speakers", "drop_patterns"):
            values[name] = tuple(values[name])
        return cls(**values)

    def card_options(self) -> dict[str, Any]:
        """The options that decide the dataset's content, as the dataset card lists them."""
        return {
            "context_turns": self.context_turns,
            "max_turn_chars": self.max_turn_chars,
            "min_reply_chars": self.min_reply_chars,
            "near_dup_threshold": self.near_dup_threshold,
            "drop_patterns": list(self.drop_patterns),
            "eval_fraction": self.eval_fraction,
            "seed": self.seed,
            "scene_gap": self.scene_gap,
            "scene_speeches": self.scene_speeches,
            "renpy_player": self.renpy_player,
            "renpy_narration": self.renpy_narration,
            "spc_speaker": self.spc_speaker,
            "spc_row": self.spc_row,
            "speakers": list(self.speakers),
        }


@dataclass
class BuildResult:
    character_id: str
    files: DatasetFiles
    train_examples: int
    eval_examples: int
    lines: int  # dialogue lines after cleaning
    character_lines: int
    scenes: int
    dropped: dict[str, int]  # reason -> count
    sources: dict[str, int]  # source -> dialogue lines parsed
    speakers: dict[str, int]  # speaker -> lines after cleaning
    character_yaml: Path | None = None  # written by this run (card or --spc-row)
    tokens: dict[str, int] | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        dropped = ", ".join(f"{reason} {n}" for reason, n in self.dropped.items()) or "none"
        wrote = f"; wrote {self.character_yaml}" if self.character_yaml else ""
        return (
            f"{self.character_id}: {self.train_examples} train and {self.eval_examples} eval "
            f"examples from {self.character_lines} of {self.lines} lines in {self.scenes} scenes "
            f"-> {self.files.folder}{wrote}\ndropped: {dropped}"
            + "".join(f"\nwarning: {w}" for w in self.warnings)
        )


# -- arguments --------------------------------------------------------------------------------


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `python -m finetune build`; defaults come from `BuildOptions`."""
    kinds = ", ".join(f"{ext} ({what})" for ext, what in SUPPORTED_EXTENSIONS.items())
    parser.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SOURCE",
        help=f"dialogue files, or folders searched recursively; supported: {kinds}",
    )
    parser.add_argument(
        "--character",
        required=True,
        metavar="ID",
        help="the character (id in the characters folder) whose lines become replies",
    )
    parser.add_argument(
        "--speaker",
        dest="speakers",
        action="append",
        default=[],
        metavar="NAME",
        help="another speaker name (or Ren'Py variable) that is the character; repeatable",
    )
    parser.add_argument(
        "--characters-dir",
        type=Path,
        default=None,
        help="characters folder (default: characters_dir from the config)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: <characters-dir>/<id>/data)",
    )
    add = functools.partial(_add_option, parser)
    add("context_turns", "turns of context before each reply, at most")
    add("max_turn_chars", "consecutive lines of one speaker merge into a turn up to this length")
    add("min_reply_chars", "replies shorter than this (after cleaning) are not used as targets")
    add(
        "near_dup_threshold",
        "drop replies whose 3-gram Jaccard similarity to an earlier reply is at least this; "
        "above 1 turns it off",
    )
    parser.add_argument(
        "--drop-pattern",
        dest="drop_patterns",
        action="append",
        default=[],
        metavar="REGEX",
        help="drop lines whose cleaned text matches (re.search); repeatable",
    )
    add(
        "eval_fraction",
        "share of the character's examples for eval.jsonl, held out as whole scenes, 0 to under 1",
    )
    add("seed", "seed of the split")
    add("scene_gap", "subtitles: a pause longer than this starts a new scene", metavar="SECONDS")
    add(
        "scene_speeches",
        "plain transcripts without scene markers: cut scenes longer than N speeches into equal "
        "parts, so that eval can hold out whole scenes; 0: no limit",
        metavar="N",
    )
    add("renpy_player", "Ren'Py: who says the menu choices", metavar="NAME")
    add(
        "renpy_narration",
        "Ren'Py: keep narration as context lines by 'Narrator', or drop it",
        choices=("keep", "drop"),
    )
    add(
        "spc_speaker",
        "Synthetic-Persona-Chat CSV: who plays the character",
        choices=SPC_SPEAKERS,
    )
    parser.add_argument(
        "--spc-row",
        type=int,
        default=None,
        metavar="K",
        help="Synthetic-Persona-Chat CSV: use only data row K (0 = first) and write its persona "
        "as the character's card",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="display name for a card written from --spc-row (default: the id, capitalised)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing character.yaml when importing a card or --spc-row persona",
    )
    parser.add_argument(
        "--count-tokens",
        action="store_true",
        help="count tokens with the configured base model's tokenizer (loads it)",
    )


def _add_option(parser: argparse.ArgumentParser, name: str, help: str, **kwargs: Any) -> None:
    """`--name-with-dashes`, typed and defaulted by the `BuildOptions` field `name`."""
    default = getattr(BuildOptions, name)
    parser.add_argument(
        "--" + name.replace("_", "-"),
        type=type(default),
        default=default,
        help=f"{help} (default: %(default)s)",
        **kwargs,
    )


# -- step 1: the character --------------------------------------------------------------------


def expand_sources(paths: Sequence[Path]) -> list[Path]:
    """Files as given; folders -> their supported files, sorted. Missing paths are errors."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS
            )
            if not found:
                raise BuildError(
                    f"{path}: no supported files in this folder; supported: "
                    + ", ".join(SUPPORTED_EXTENSIONS)
                )
            files.extend(found)
        elif path.is_file():
            source_kind(path)
            files.append(path)
        else:
            raise BuildError(f"{path}: not found; give dialogue files or folders")
    return list(dict.fromkeys(files))


def _default_characters_dir() -> Path:
    from bot.config import ConfigError, load_config

    try:
        return load_config().characters_path
    except ConfigError as exc:
        raise BuildError(str(exc)) from None


def spc_card(path: Path, options: BuildOptions) -> dict[str, Any]:
    """character.yaml fields for the persona of `--spc-row` in a Synthetic-Persona-Chat CSV."""
    assert options.spc_row is not None
    row = pick_spc_row(read_spc_rows(path), options.spc_row, str(path))
    who = spc_speaker(options.spc_speaker)
    persona = row.personas[who]
    if not persona:
        raise BuildError(f"{path}:{row.line}: row {row.index} has no persona for {who}")
    name = options.name or options.character.replace("-", " ").replace("_", " ").title()
    data: dict[str, Any] = {
        "id": options.character,
        "name": name,
        "description": f"{name}, in their own words: " + " ".join(persona),
        "personality": persona,
        "greeting": "Hi!",
    }
    cards.validate_character_data(data, str(path))
    return data


@dataclass(frozen=True)
class CardImport:
    """A character card among the sources, and the character.yaml it wrote (if any)."""

    path: Path
    card: cards.Card


def import_character(
    files: Sequence[Path], options: BuildOptions, characters_dir: Path
) -> tuple[CardImport | None, Path | None]:
    """Step 1: write character.yaml from a card source or `--spc-row` (unless present)."""
    card_files = [f for f in files if f.suffix.lower() in CARD_EXTENSIONS]
    if len(card_files) > 1:
        names = ", ".join(str(f) for f in card_files)
        raise BuildError(f"{names}: one character card per build; allowed: a single .json/.png")
    imported, written = None, None
    if card_files:
        card, written = cards.import_card(
            card_files[0], characters_dir, options.character, force=options.force
        )
        imported = CardImport(card_files[0], card)
        if card.lore is not None:  # the card's lorebook: what it could not carry over
            lore = card.lore.summary(written)
            (log.warning if lore.unmapped else log.info)("%s", lore.text())
    if options.spc_row is not None:
        csvs = [f for f in files if f.suffix.lower() == ".csv"]
        if len(csvs) != 1:
            raise BuildError("--spc-row needs exactly one Synthetic-Persona-Chat .csv source")
        written = cards.write_character_yaml(
            characters_dir,
            spc_card(csvs[0], options),
            force=options.force,
            comment=f"Persona of row {options.spc_row} of {csvs[0].name} ({options.spc_speaker}).",
        )
    return imported, written


def _load_character(characters_dir: Path, character_id: str) -> Character:
    try:
        return CharacterRegistry.load(characters_dir).get(character_id)
    except CharacterError as exc:
        raise BuildError(str(exc)) from None


# -- step 2: sources --------------------------------------------------------------------------


def parse_sources(
    files: Sequence[Path],
    card: CardImport | None,
    character: Character,
    names: frozenset[str],
    options: BuildOptions,
) -> list[ParsedSource]:
    rpy = [f for f in files if f.suffix.lower() == ".rpy"]
    parse_options = ParseOptions(
        character_name=character.name,
        player_name=options.renpy_player,
        narration=options.renpy_narration,
        scene_gap=options.scene_gap,
        scene_speeches=options.scene_speeches,
        spc_speaker=options.spc_speaker,
        spc_row=options.spc_row,
        known_names=names,
        renpy=renpy_definitions(rpy) if rpy else None,
    )
    return [
        cards.card_source(card.card, str(path))
        if card is not None and path == card.path
        else parse_source(path, parse_options)
        for path in files
    ]


def speaker_counts(
    scenes: Sequence[Scene], is_character: Callable[[str], bool], character: Character
) -> Counter[str]:
    """Lines per speaker after cleaning, the character's under its card name."""
    return Counter(
        character.name if is_character(line.speaker) else line.speaker
        for scene in scenes
        for line in scene.lines
        if not line.context_only
    )


# -- step 4: output ---------------------------------------------------------------------------


def _count_tokens(
    train: Sequence[TrainingRecord], eval_: Sequence[TrainingRecord]
) -> dict[str, int]:
    from bot.config import load_config
    from bot.engine.loading import load_tokenizer

    tokenizer = load_tokenizer(load_config())

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    figures = {}
    for name, split in (("train", train), ("eval", eval_)):
        figures[f"{name}_reply_tokens"] = sum(count(e.reply) for e in split)
        figures[f"{name}_context_tokens"] = sum(count(t.content) for e in split for t in e.context)
    return figures


# -- the build --------------------------------------------------------------------------------


def run_build(options: BuildOptions) -> BuildResult:
    """Build the dataset `options` describe; BuildError on bad input."""
    patterns = cleaning.compile_patterns(options.drop_patterns)
    characters_dir = options.characters_dir or _default_characters_dir()
    files = expand_sources(options.sources)

    # 1. the character
    card, written = import_character(files, options, characters_dir)
    character = _load_character(characters_dir, options.character)
    names = frozenset(n.casefold() for n in (*character.names, *options.speakers))

    def is_character(speaker: str) -> bool:
        return speaker.casefold() in names

    # 2. sources -> clean scenes
    parsed = parse_sources(files, card, character, names, options)
    dropped: list[Dropped] = [d for p in parsed for d in p.dropped]
    scenes, cleaning_dropped = cleaning.clean_scenes(
        [s for p in parsed for s in p.scenes], patterns
    )
    dropped += cleaning_dropped
    speakers = speaker_counts(scenes, is_character, character)
    if not speakers.get(character.name):
        top = ", ".join(f"{name} ({count})" for name, count in speakers.most_common(10))
        raise BuildError(
            f"{', '.join(map(str, options.sources))}: no line is spoken by {character.name} "
            f"(names: {', '.join(sorted(names))}); speakers found: {top or 'none'}; "
            "pass --speaker NAME for the name the sources use"
        )

    # 3. examples and the split
    candidates, unused = make_examples(
        scenes,
        is_character,
        character.name,
        context_turns=options.context_turns,
        max_turn_chars=options.max_turn_chars,
    )
    examples, example_dropped = filter_examples(
        candidates, options.min_reply_chars, options.near_dup_threshold
    )
    dropped += unused + example_dropped
    if not examples:
        raise BuildError(
            f"{character.name} has {speakers[character.name]} lines but no example survived: "
            "a reply needs a turn by someone else before it in the same scene "
            f"(dropped: {dict(Counter(d.reason for d in dropped))})"
        )
    group_of = {scene.id: scene.group for scene in scenes}
    train, eval_ = split_examples(examples, group_of, options.eval_fraction, options.seed)
    tokens = _count_tokens(train, eval_) if options.count_tokens else None

    # 4. output
    files_out = DatasetFiles(options.out or DatasetFiles.of(characters_dir, character.id).folder)
    summary = dropped_summary(dropped)
    groups = {group_of[e.scene] for e in examples}
    warnings = split_warnings(
        len(train), len(eval_), len(groups), options.eval_fraction, len(scenes)
    )
    for warning in warnings:
        log.warning("%s: %s", character.id, warning)
    card_data = {
        "character": {"id": character.id, "name": character.name, "names": sorted(names)},
        "sources": [
            {"path": p.path, "kind": p.kind, "lines": p.line_count, "file_lines": p.file_lines}
            for p in parsed
        ],
        "scenes": len(scenes),
        "speakers": dict(speakers.most_common()),
        "character_lines": speakers[character.name],
        "examples": {"candidates": len(candidates), "train": len(train), "eval": len(eval_)},
        "split": {
            "groups": len(groups),
            "eval_groups": len({group_of[e.scene] for e in eval_}),
            "rule": SPLIT_RULE,
        },
        "dropped": summary,
        "warnings": warnings,
        "tokens": tokens,
        "options": options.card_options(),
    }
    write_files_atomically(
        {
            files_out.train: records_text(train),
            files_out.eval: records_text(eval_),
            files_out.card_markdown: card_markdown(card_data),
            files_out.card_json: json.dumps(card_data, indent=2, ensure_ascii=False) + "\n",
        }
    )
    log.info("Wrote %d train and %d eval examples to %s", len(train), len(eval_), files_out.folder)
    return BuildResult(
        character_id=character.id,
        files=files_out,
        train_examples=len(train),
        eval_examples=len(eval_),
        lines=sum(speakers.values()),
        character_lines=speakers[character.name],
        scenes=len(scenes),
        dropped=dict(Counter(d.reason for d in dropped)),
        sources={p.path: p.line_count for p in parsed},
        speakers=dict(speakers),
        character_yaml=written,
        tokens=tokens,
        warnings=warnings,
    )

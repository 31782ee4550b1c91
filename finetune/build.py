"""`python -m finetune build`: dialogue sources -> train/eval JSONL for one character.

Steps and rules:
  1. Sources (files, or folders searched recursively for supported extensions) are parsed into
     scenes (`finetune.sources`, `finetune.cards`). A card source (.json/.png) or `--spc-row`
     first writes `characters/<id>/character.yaml` when it does not exist (or with `--force`).
  2. The character is `--character ID` from the characters folder; a line is the character's
     when its speaker equals the card's name or an alias or a `--speaker` name (case-insensitive).
     Its lines are shown under the card's name; everyone else is the user side, names kept.
  3. Lines are cleaned and filtered (`finetune.cleaning`).
  4. Turns: consecutive lines by one speaker in a scene merge into one turn (joined by a
     newline), but a turn is closed before it would grow past `--max-turn-chars`, so long
     monologues become several turns.
  5. Examples: every character turn with at least one turn before it in its scene gives one
     example: up to `--context-turns` turns before it (role "character" for its own turns,
     "user" otherwise), then its text as the reply. Short, duplicate and near-duplicate replies
     are dropped as targets (the turn stays as context).
  6. Split by scene group: sha256(seed:group) decides, so the same input and seed always give the
     same split and a scene never straddles it; with 2+ groups eval and train are non-empty.
  7. train.jsonl, eval.jsonl, dataset_card.md and dataset_card.json are written to temporary
     files in the output folder and only then renamed over the old ones: a failure leaves the
     previous files as they were.

Example line: {"id", "scene", "source": "file:line", "context": [{"role", "author", "text"}],
"reply"}; `id` is a hash of scene, source and reply, stable across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bot.characters import Character, CharacterError, CharacterRegistry
from finetune import cards, cleaning
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
    read_spc_rows,
    renpy_definitions,
    source_kind,
    spc_speaker,
)

__all__ = ["BuildError", "BuildResult", "Example", "add_build_arguments", "run_build"]

log = logging.getLogger(__name__)
SAMPLES_PER_REASON = 5
TRAIN_FILE, EVAL_FILE = "train.jsonl", "eval.jsonl"
CARD_MD, CARD_JSON = "dataset_card.md", "dataset_card.json"


@dataclass
class BuildResult:
    character_id: str
    out_dir: Path
    train_path: Path
    eval_path: Path
    card_md_path: Path
    card_json_path: Path
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

    def summary(self) -> str:
        dropped = ", ".join(f"{reason} {n}" for reason, n in self.dropped.items()) or "none"
        wrote = f"; wrote {self.character_yaml}" if self.character_yaml else ""
        return (
            f"{self.character_id}: {self.train_examples} train and {self.eval_examples} eval "
            f"examples from {self.character_lines} of {self.lines} lines in {self.scenes} scenes "
            f"-> {self.out_dir}{wrote}\ndropped: {dropped}"
        )


@dataclass
class Turn:
    speaker: str
    text: str
    source: str
    line: int
    is_character: bool
    context_only: bool


@dataclass
class Example:
    id: str
    scene: str
    source: str
    context: list[dict[str, str]]
    reply: str
    group: str = field(default="", repr=False)
    line: int = field(default=0, repr=False)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k not in ("group", "line")}
        return json.dumps(data, ensure_ascii=False)


# -- arguments --------------------------------------------------------------------------------


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of `python -m finetune build`."""
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
    parser.add_argument(
        "--context-turns",
        type=int,
        default=6,
        help="turns of context before each reply, at most (default 6)",
    )
    parser.add_argument(
        "--max-turn-chars",
        type=int,
        default=600,
        help="consecutive lines of one speaker merge into a turn up to this length (default 600)",
    )
    parser.add_argument(
        "--min-reply-chars",
        type=int,
        default=2,
        help="replies shorter than this (after cleaning) are not used as targets (default 2)",
    )
    parser.add_argument(
        "--near-dup-threshold",
        type=float,
        default=0.9,
        help="drop replies whose 3-gram Jaccard similarity to an earlier reply is at least this "
        "(default 0.9; above 1 turns it off)",
    )
    parser.add_argument(
        "--drop-pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="drop lines whose cleaned text matches (re.search); repeatable",
    )
    parser.add_argument(
        "--eval-fraction",
        type=float,
        default=0.1,
        help="share of scenes for eval.jsonl, 0 to under 1 (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument(
        "--scene-gap",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="subtitles: a pause longer than this starts a new scene (default 10)",
    )
    parser.add_argument(
        "--renpy-player",
        default="Player",
        metavar="NAME",
        help="Ren'Py: who says the menu choices (default Player)",
    )
    parser.add_argument(
        "--renpy-narration",
        choices=("keep", "drop"),
        default="keep",
        help="Ren'Py: keep narration as context lines by 'Narrator', or drop it (default keep)",
    )
    parser.add_argument(
        "--spc-speaker",
        default="User 2",
        choices=SPC_SPEAKERS,
        help="Synthetic-Persona-Chat CSV: who plays the character (default 'User 2')",
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


# -- sources ----------------------------------------------------------------------------------


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


def _spc_card(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    rows = read_spc_rows(path)
    if not 0 <= args.spc_row < len(rows):
        raise BuildError(
            f"{path}: --spc-row {args.spc_row} is out of range; the file has rows 0 to "
            f"{len(rows) - 1}"
        )
    row = rows[args.spc_row]
    who = spc_speaker(args.spc_speaker)
    persona = row.personas[who]
    if not persona:
        raise BuildError(f"{path}:{row.line}: row {row.index} has no persona for {who}")
    name = args.name or args.character.replace("-", " ").replace("_", " ").title()
    data: dict[str, Any] = {
        "id": args.character,
        "name": name,
        "description": f"{name}, in their own words: " + " ".join(persona),
        "personality": persona,
        "greeting": "Hi!",
    }
    cards.validate_character_data(data, str(path))
    return data


def _load_character(characters_dir: Path, character_id: str) -> Character:
    try:
        return CharacterRegistry.load(characters_dir).get(character_id)
    except CharacterError as exc:
        raise BuildError(str(exc)) from None


# -- turns and examples -----------------------------------------------------------------------


def scene_turns(scene: Scene, is_character: Callable[[str], bool], max_chars: int) -> list[Turn]:
    turns: list[Turn] = []
    for line in scene.lines:
        last = turns[-1] if turns else None
        if (
            last is not None
            and last.speaker.casefold() == line.speaker.casefold()
            and last.context_only == line.context_only
            and len(last.text) + 1 + len(line.text) <= max_chars
        ):
            last.text = f"{last.text}\n{line.text}"
            continue
        turns.append(
            Turn(
                line.speaker,
                line.text,
                line.source,
                line.line,
                is_character(line.speaker),
                line.context_only,
            )
        )
    return turns


def example_id(scene: str, source: str, reply: str) -> str:
    return hashlib.sha256(f"{scene}\x1f{source}\x1f{reply}".encode()).hexdigest()[:16]


def make_examples(
    scenes: Sequence[Scene],
    is_character: Callable[[str], bool],
    character_name: str,
    *,
    context_turns: int,
    max_turn_chars: int,
) -> list[Example]:
    examples = []
    for scene in scenes:
        turns = scene_turns(scene, is_character, max_turn_chars)
        for i, turn in enumerate(turns):
            if not turn.is_character or turn.context_only or i == 0:
                continue
            context = [
                {
                    "role": "character" if t.is_character else "user",
                    "author": character_name if t.is_character else t.speaker,
                    "text": t.text,
                }
                for t in turns[max(0, i - context_turns) : i]
            ]
            source = f"{turn.source}:{turn.line}"
            examples.append(
                Example(
                    example_id(scene.id, source, turn.text),
                    scene.id,
                    source,
                    context,
                    turn.text,
                    group=scene.group,
                    line=turn.line,
                )
            )
    return examples


def filter_examples(
    examples: Sequence[Example], min_reply_chars: int, threshold: float
) -> tuple[list[Example], list[Dropped]]:
    dropped: list[Dropped] = []
    long_enough = []
    for example in examples:
        if len(example.reply) < min_reply_chars:
            path, _, _ = example.source.rpartition(":")
            dropped.append(Dropped(cleaning.REASON_SHORT, path, example.line, example.reply))
        else:
            long_enough.append(example)
    kept = []
    flags = cleaning.duplicate_flags([e.reply for e in long_enough], threshold)
    for example, (reason, first) in zip(long_enough, flags, strict=True):
        if reason is None:
            kept.append(example)
            continue
        path, _, _ = example.source.rpartition(":")
        assert first is not None
        note = f"{example.reply}  (like {long_enough[first].source})"
        dropped.append(Dropped(reason, path, example.line, note))
    return kept, dropped


def split_unit(group: str, seed: int) -> float:
    """A number in [0, 1) fixed by the group and seed."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_examples(
    examples: Sequence[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Whole scene groups go to eval when their hash is below eval_fraction."""
    groups = sorted({e.group for e in examples}, key=lambda g: (split_unit(g, seed), g))
    evals = {g for g in groups if split_unit(g, seed) < eval_fraction}
    if eval_fraction > 0 and len(groups) >= 2:
        if not evals:
            evals = {groups[0]}  # the lowest hash: still decided by hash and seed
        if len(evals) == len(groups):
            evals.discard(groups[-1])
    train = [e for e in examples if e.group not in evals]
    eval_ = [e for e in examples if e.group in evals]
    return train, eval_


# -- output -----------------------------------------------------------------------------------


def _write_atomically(files: dict[Path, str]) -> None:
    """Write every file to a temp file in its folder first, then rename all into place."""
    temps: dict[Path, Path] = {}
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps[path] = Path(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def _count_tokens(train: Sequence[Example], eval_: Sequence[Example]) -> dict[str, int]:
    from bot.config import load_config
    from bot.engine.loading import load_tokenizer

    tokenizer = load_tokenizer(load_config())

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    figures = {}
    for name, split in (("train", train), ("eval", eval_)):
        figures[f"{name}_reply_tokens"] = sum(count(e.reply) for e in split)
        figures[f"{name}_context_tokens"] = sum(count(c["text"]) for e in split for c in e.context)
    return figures


def _card_markdown(card: dict[str, Any]) -> str:
    out = [
        f"# Dataset card: {card['character']['name']} ({card['character']['id']})",
        "",
        f"Built by `python -m finetune build`; {card['examples']['train']} training and "
        f"{card['examples']['eval']} evaluation examples from {card['scenes']} scenes "
        f"({card['split']['eval_groups']} of {card['split']['groups']} scene groups in eval, "
        f"eval fraction {card['options']['eval_fraction']}, seed {card['options']['seed']}).",
        "",
        "## Sources",
        "",
        "| source | kind | dialogue lines | file lines |",
        "|---|---|---|---|",
    ]
    for source in card["sources"]:
        cells = (f"`{source['path']}`", source["kind"], source["lines"], source["file_lines"])
        out.append("| " + " | ".join(map(str, cells)) + " |")
    out += ["", "## Lines per speaker (after cleaning)", "", "| speaker | lines |", "|---|---|"]
    out += [f"| {name} | {count} |" for name, count in list(card["speakers"].items())[:30]]
    if len(card["speakers"]) > 30:
        out.append(f"| ({len(card['speakers']) - 30} more) | |")
    out += [
        "",
        "## Examples",
        "",
        f"- character lines: {card['character_lines']}",
        f"- examples before filtering: {card['examples']['candidates']}",
        f"- train: {card['examples']['train']}, eval: {card['examples']['eval']}",
    ]
    if card.get("tokens"):
        out += [f"- {key.replace('_', ' ')}: {value}" for key, value in card["tokens"].items()]
    out += ["", "## Dropped", ""]
    if not card["dropped"]:
        out.append("Nothing was dropped.")
    for reason, entry in card["dropped"].items():
        out.append(f"- **{reason}**: {entry['count']}")
        out += [f"  - `{sample}`" for sample in entry["samples"]]
    out += ["", "## Options", "", "```json", json.dumps(card["options"], indent=2), "```", ""]
    return "\n".join(out)


def _sample(d: Dropped) -> str:
    text = " ".join(d.text.split())
    text = text[:100] + ("…" if len(text) > 100 else "")
    return f"{d.source}:{d.line}: {text}".replace("`", "'")


# -- the build --------------------------------------------------------------------------------


def _check_options(args: argparse.Namespace) -> None:
    if not 0 <= args.eval_fraction < 1:
        raise BuildError(f"--eval-fraction {args.eval_fraction}: allowed: 0 to under 1")
    if args.context_turns < 1:
        raise BuildError(f"--context-turns {args.context_turns}: allowed: 1 or more")
    if args.max_turn_chars < 1 or args.min_reply_chars < 0:
        raise BuildError("--max-turn-chars must be 1 or more and --min-reply-chars 0 or more")
    if args.scene_gap <= 0:
        raise BuildError(f"--scene-gap {args.scene_gap}: allowed: more than 0 seconds")


def run_build(args: argparse.Namespace) -> BuildResult:
    """Build the dataset described by the parsed arguments; BuildError on bad input."""
    _check_options(args)
    patterns = cleaning.compile_patterns(args.drop_pattern)
    characters_dir = args.characters_dir or _default_characters_dir()
    files = expand_sources(args.sources)
    card_files = [f for f in files if f.suffix.lower() in CARD_EXTENSIONS]
    if len(card_files) > 1:
        names = ", ".join(str(f) for f in card_files)
        raise BuildError(f"{names}: one character card per build; allowed: a single .json/.png")

    written: Path | None = None
    read_cards = [cards.read_card(f) for f in card_files]
    if read_cards:
        data = cards.card_to_data(read_cards[0], args.character)
        written = cards.write_character_yaml(
            characters_dir,
            data,
            force=args.force,
            comment=f"Imported from {card_files[0].name} by finetune build.",
        )
    if args.spc_row is not None:
        csvs = [f for f in files if f.suffix.lower() == ".csv"]
        if len(csvs) != 1:
            raise BuildError("--spc-row needs exactly one Synthetic-Persona-Chat .csv source")
        written = cards.write_character_yaml(
            characters_dir,
            _spc_card(csvs[0], args),
            force=args.force,
            comment=f"Persona of row {args.spc_row} of {csvs[0].name} ({args.spc_speaker}).",
        )
    character = _load_character(characters_dir, args.character)
    names = {n.casefold() for n in (*character.names, *args.speaker)}

    def is_character(speaker: str) -> bool:
        return speaker.casefold() in names

    rpy = [f for f in files if f.suffix.lower() == ".rpy"]
    options = ParseOptions(
        character_name=character.name,
        player_name=args.renpy_player,
        narration=args.renpy_narration,
        scene_gap=args.scene_gap,
        spc_speaker=args.spc_speaker,
        spc_row=args.spc_row,
        known_names=frozenset(names),
        renpy=renpy_definitions(rpy) if rpy else None,
    )
    parsed: list[ParsedSource] = []
    for path in files:
        if path in card_files:
            card = read_cards[0]
            scenes = cards.card_scenes(card)
            parsed.append(
                ParsedSource(str(path), "card", scenes, [], len(card.mes_example.split("\n")))
            )
        else:
            parsed.append(parse_source(path, options))

    dropped: list[Dropped] = [d for p in parsed for d in p.dropped]
    scenes, cleaning_dropped = cleaning.clean_scenes(
        [s for p in parsed for s in p.scenes], patterns
    )
    dropped += cleaning_dropped
    speakers = Counter(
        character.name if is_character(line.speaker) else line.speaker
        for scene in scenes
        for line in scene.lines
        if not line.context_only
    )
    if not speakers.get(character.name):
        top = ", ".join(f"{name} ({count})" for name, count in speakers.most_common(10))
        raise BuildError(
            f"{', '.join(map(str, args.sources))}: no line is spoken by {character.name} "
            f"(names: {', '.join(sorted(names))}); speakers found: {top or 'none'}; "
            "pass --speaker NAME for the name the sources use"
        )
    candidates = make_examples(
        scenes,
        is_character,
        character.name,
        context_turns=args.context_turns,
        max_turn_chars=args.max_turn_chars,
    )
    examples, example_dropped = filter_examples(
        candidates, args.min_reply_chars, args.near_dup_threshold
    )
    dropped += example_dropped
    if not examples:
        raise BuildError(
            f"{character.name} has {speakers[character.name]} lines but no example survived: "
            "a reply needs a turn by someone else before it in the same scene "
            f"(dropped: {dict(Counter(d.reason for d in dropped))})"
        )
    train, eval_ = split_examples(examples, args.eval_fraction, args.seed)
    tokens = _count_tokens(train, eval_) if args.count_tokens else None

    out_dir = args.out or characters_dir / character.id / "data"
    by_reason: dict[str, list[Dropped]] = defaultdict(list)
    for d in dropped:
        by_reason[d.reason].append(d)
    groups = {e.group for e in examples}
    card = {
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
            "eval_groups": len({e.group for e in eval_}),
            "rule": "sha256(seed:scene group) / 2**64 < eval_fraction",
        },
        "dropped": {
            reason: {
                "count": len(items),
                "samples": [_sample(d) for d in items[:SAMPLES_PER_REASON]],
            }
            for reason, items in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
        },
        "tokens": tokens,
        "options": {
            "context_turns": args.context_turns,
            "max_turn_chars": args.max_turn_chars,
            "min_reply_chars": args.min_reply_chars,
            "near_dup_threshold": args.near_dup_threshold,
            "drop_patterns": list(args.drop_pattern),
            "eval_fraction": args.eval_fraction,
            "seed": args.seed,
            "scene_gap": args.scene_gap,
            "renpy_player": args.renpy_player,
            "renpy_narration": args.renpy_narration,
            "spc_speaker": args.spc_speaker,
            "spc_row": args.spc_row,
            "speakers": list(args.speaker),
        },
    }
    paths = {name: out_dir / name for name in (TRAIN_FILE, EVAL_FILE, CARD_MD, CARD_JSON)}
    _write_atomically(
        {
            paths[TRAIN_FILE]: "".join(e.to_json() + "\n" for e in train),
            paths[EVAL_FILE]: "".join(e.to_json() + "\n" for e in eval_),
            paths[CARD_MD]: _card_markdown(card),
            paths[CARD_JSON]: json.dumps(card, indent=2, ensure_ascii=False) + "\n",
        }
    )
    log.info("Wrote %d train and %d eval examples to %s", len(train), len(eval_), out_dir)
    return BuildResult(
        character_id=character.id,
        out_dir=out_dir,
        train_path=paths[TRAIN_FILE],
        eval_path=paths[EVAL_FILE],
        card_md_path=paths[CARD_MD],
        card_json_path=paths[CARD_JSON],
        train_examples=len(train),
        eval_examples=len(eval_),
        lines=sum(speakers.values()),
        character_lines=speakers[character.name],
        scenes=len(scenes),
        dropped={reason: len(items) for reason, items in by_reason.items()},
        sources={p.path: p.line_count for p in parsed},
        speakers=dict(speakers),
        character_yaml=written,
        tokens=tokens,
    )

"""Shared by every importer: the parsed types (`Line`, `Scene`, `Dropped`, `ParsedSource`,
`ParseOptions`), `BuildError` and `located`, reading a source file, and the `NAME: text`
helpers used by several formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.errors import FinetuneError

if TYPE_CHECKING:
    from finetune.sources.renpy import RenpyDefinitions

SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".txt": "plain transcript",
    ".rpy": "Ren'Py script",
    ".ass": "Advanced SubStation subtitles",
    ".ssa": "SubStation subtitles",
    ".srt": "SubRip subtitles",
    ".jsonl": "JSON lines (Q&A pairs or chat scenes)",
    ".csv": "Synthetic-Persona-Chat CSV",
    ".json": "SillyTavern character card (V1/V2/V3 JSON)",
    ".png": "SillyTavern character card (PNG with chara/ccv3 chunk)",
}
CARD_EXTENSIONS = (".json", ".png")
NARRATOR = "Narrator"
USER = "User"


class BuildError(FinetuneError):
    """Bad input for the dataset builder; the message names file and line and what is allowed."""


def located(path: str | Path, line: int, what: str, allowed: str) -> BuildError:
    return BuildError(f"{path}:{line}: {what}; {allowed}")


@dataclass(frozen=True)
class Line:
    speaker: str
    text: str
    source: str
    line: int
    context_only: bool = False  # a copy shown as context (Ren'Py menu branches), never a reply


@dataclass
class Scene:
    id: str
    lines: list[Line] = field(default_factory=list)
    group: str = ""  # scenes of one group go to the same split (train or eval)

    def __post_init__(self) -> None:
        self.group = self.group or self.id


@dataclass(frozen=True)
class Dropped:
    reason: str
    source: str
    line: int
    text: str


@dataclass
class ParsedSource:
    path: str
    kind: str
    scenes: list[Scene]
    dropped: list[Dropped]
    file_lines: int

    @property
    def line_count(self) -> int:
        return sum(1 for scene in self.scenes for line in scene.lines if not line.context_only)


@dataclass
class ParseOptions:
    character_name: str = "Character"
    player_name: str = "Player"
    narration: str = "keep"  # "keep" (speaker "Narrator") or "drop"
    scene_gap: float = 10.0
    spc_speaker: str = "User 2"
    spc_row: int | None = None
    known_names: frozenset[str] = frozenset()  # casefolded character names and --speaker names
    # Plain transcripts with no scene marker between speeches: the most speeches in one scene
    # (a longer scene is cut into equal parts); 0 = no limit. Files with markers are not cut.
    scene_speeches: int = 40
    renpy: RenpyDefinitions | None = None


def read_text(path: Path) -> str:
    """The file as text: UTF-8 (a BOM is fine), newlines normalised; empty files are errors."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise located(
            path,
            line,
            f"not UTF-8 (byte 0x{data[exc.start]:02x} cannot be decoded)",
            "save it as UTF-8, e.g. `iconv -f cp1252 -t utf-8 in.txt > out.txt`",
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise located(path, 1, "empty file", "a source needs at least one line of dialogue")
    return text


def source_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise located(path, 1, f"unsupported file type '{suffix or path.name}'", supported)
    return suffix


class _Scenes:
    """Collects lines into scenes; empty scenes are never emitted."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.scenes: list[Scene] = []
        self.current: Scene | None = None
        self.count = 0

    def start(self, scene_id: str | None = None, group: str = "") -> Scene:
        self.count += 1
        self.current = Scene(scene_id or f"{self.source}#{self.count}", group=group)
        self.scenes.append(self.current)
        return self.current

    def add(self, line: Line) -> None:
        if self.current is None:
            self.start()
        assert self.current is not None
        self.current.lines.append(line)

    def last(self) -> Line | None:
        return self.current.lines[-1] if self.current and self.current.lines else None

    def replace_last(self, line: Line) -> None:
        assert self.current is not None
        self.current.lines[-1] = line

    def result(self) -> list[Scene]:
        return [scene for scene in self.scenes if scene.lines]


# -- shared helpers ---------------------------------------------------------------------------

_NAME = r"[^\W\d_][^\n:]{0,39}?"
_NAMED_LINE = re.compile(
    rf"^(?P<name>{_NAME})\s*(?:\((?P<note>[^()]*)\))?\s*:(?:\s+(?P<text>.*))?$"
)
_BAD_NAME_CHARS = re.compile(r"[.!?,;\"“”]\s*$|[\"“”{}\[\]<>=/\\|]")
_STAGE_DIRECTION = re.compile(r"^\s*(\[[^\]]*\]|\([^)]*\))\s*$")


def _name_ok(name: str) -> bool:
    name = name.strip()
    return bool(name) and len(name.split()) <= 4 and not _BAD_NAME_CHARS.search(name)


# A regnal number (I to XXXIX): only I, V and X, so that names such as LI, LIV or MIX are not
# taken for numerals.
_ROMAN_NUMERAL = re.compile(r"X{0,3}(?:IX|IV|V?I{0,3})")
# Words that stay lower case inside a name: `DUKE OF YORK` -> `Duke of York`.
_LINKING_WORDS = frozenset(
    {"a", "an", "and", "at", "da", "de", "del", "der", "di", "du", "in", "la", "le", "of", "on"}
    | {"the", "to", "van", "von"}
)


def display_name(name: str) -> str:
    """Speaker names as shown: whitespace collapsed, ALL CAPS in title case, except Roman
    numerals and joining words after the first word (`KING RICHARD III` -> `King Richard
    III`, `DUKE OF YORK` -> `Duke of York`)."""
    words = name.split()
    name = " ".join(words)
    if not name.isupper() or len(name) <= 1:
        return name
    return " ".join(_title_word(word, first=index == 0) for index, word in enumerate(words))


def _title_word(word: str, *, first: bool) -> str:
    if first:
        return word.title()
    if _ROMAN_NUMERAL.fullmatch(word):
        return word
    return word.lower() if word.lower() in _LINKING_WORDS else word.title()


def named_line(text: str) -> tuple[str, str] | None:
    """`NAME: text` -> (NAME, text); text may be empty for a `NAME:` header."""
    match = _NAMED_LINE.match(text.strip())
    if not match or not _name_ok(match["name"]):
        return None
    return display_name(match["name"]), (match["text"] or "").strip()


def strip_brackets(text: str) -> str:
    """Remove bracketed stage directions and sound tags: `[laughs]`."""
    return re.sub(r"\[[^\]]*\]", " ", text)

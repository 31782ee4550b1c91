"""Parsers: dialogue files -> scenes (lists of speaker lines with file and line number).

Every parser returns a `ParsedSource`: scenes in file order, plus the lines it skipped and why.
An example never crosses a scene, so the scene rules below decide what counts as "context".
Markup of the format itself is removed here; general cleaning is in `finetune.cleaning`.

One module per format, each documenting its rules: `transcript` (plain transcripts, `.txt`),
`subtitles` (`.ass`/`.ssa`/`.srt`), `jsonl` (JSON lines), `spc` (Synthetic-Persona-Chat CSV)
and `renpy` (Ren'Py scripts, `.rpy`); `common` holds the shared types and helpers. Everything is
re-exported here, so `from finetune.sources import X` works for all of them.

SillyTavern cards (`.json`, `.png`) are read by `finetune.cards`.
"""

from __future__ import annotations

from pathlib import Path

from finetune.sources.common import (
    CARD_EXTENSIONS,
    NARRATOR,
    SUPPORTED_EXTENSIONS,
    USER,
    BuildError,
    Dropped,
    Line,
    ParsedSource,
    ParseOptions,
    Scene,
    display_name,
    located,
    named_line,
    read_text,
    source_kind,
    strip_brackets,
)
from finetune.sources.jsonl import parse_jsonl
from finetune.sources.renpy import (
    MENU_CONTEXT_LINES,
    RENPY_KEYWORDS,
    RenpyDefinitions,
    parse_renpy,
    renpy_definitions,
)
from finetune.sources.spc import (
    SPC_COLUMNS,
    SPC_SPEAKERS,
    SpcRow,
    parse_spc,
    pick_spc_row,
    read_spc_rows,
    spc_speaker,
    spc_turns,
)
from finetune.sources.subtitles import (
    parse_ass,
    parse_srt,
)
from finetune.sources.transcript import parse_transcript

__all__ = [
    "CARD_EXTENSIONS",
    "MENU_CONTEXT_LINES",
    "NARRATOR",
    "PARSERS",
    "RENPY_KEYWORDS",
    "SPC_COLUMNS",
    "SPC_SPEAKERS",
    "SUPPORTED_EXTENSIONS",
    "USER",
    "BuildError",
    "Dropped",
    "Line",
    "ParseOptions",
    "ParsedSource",
    "RenpyDefinitions",
    "Scene",
    "SpcRow",
    "display_name",
    "located",
    "named_line",
    "parse_ass",
    "parse_jsonl",
    "parse_renpy",
    "parse_source",
    "parse_spc",
    "parse_srt",
    "parse_transcript",
    "pick_spc_row",
    "read_spc_rows",
    "read_text",
    "renpy_definitions",
    "source_kind",
    "spc_speaker",
    "spc_turns",
    "strip_brackets",
]

PARSERS = {
    ".txt": parse_transcript,
    ".rpy": parse_renpy,
    ".srt": parse_srt,
    ".ass": parse_ass,
    ".ssa": parse_ass,
    ".jsonl": parse_jsonl,
    ".csv": parse_spc,
}


def parse_source(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    """Parse one non-card source by its extension."""
    kind = source_kind(path)
    if kind not in PARSERS:
        raise located(path, 1, f"'{kind}' is a character card", "cards are read by finetune.cards")
    return PARSERS[kind](path, options, display)

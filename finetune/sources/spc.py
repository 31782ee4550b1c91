"""Synthetic-Persona-Chat CSV (`.csv`) -> scenes.

Columns `user 1 personas`, `user 2 personas`,
`Best Generated Conversation`; each row is a scene of `User 1: ...`/`User 2: ...` lines (a
leading `*` is ignored, `[...]` lines are stage directions, other lines continue the previous
turn). `spc_speaker` ("User 2" by default) is renamed to the character; the other keeps its
name. `spc_row` (0 = first data row) keeps only that row.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from finetune.sources.common import (
    _STAGE_DIRECTION,
    BuildError,
    Dropped,
    Line,
    ParsedSource,
    ParseOptions,
    Scene,
    located,
    read_text,
)

SPC_COLUMNS = ("user 1 personas", "user 2 personas", "Best Generated Conversation")
SPC_SPEAKERS = ("User 1", "User 2")
_SPC_TURN = re.compile(r"^\*?\s*(User [12])\s*:\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class SpcRow:
    index: int  # 0 = first data row
    line: int  # file line where the row starts
    personas: dict[str, list[str]]  # "User 1"/"User 2" -> persona lines
    conversation: str
    conversation_line: int  # file line where the conversation field starts


def read_spc_rows(path: Path, display: str | None = None) -> list[SpcRow]:
    src = display or str(path)
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[SpcRow] = []
    allowed = "columns: " + ", ".join(f"'{c}'" for c in SPC_COLUMNS)
    try:
        header = next(reader)
        missing = [c for c in SPC_COLUMNS if c not in header]
        if missing:
            raise located(src, 1, f"missing column {missing[0]!r}", allowed)
        where = [header.index(c) for c in SPC_COLUMNS]
        start = reader.line_num + 1
        for row in reader:
            if not any(cell.strip() for cell in row):
                start = reader.line_num + 1
                continue
            if len(row) != len(header):
                raise located(
                    src, start, f"row has {len(row)} fields, the header {len(header)}", allowed
                )
            before = sum(row[i].count("\n") for i in range(where[2]))
            rows.append(
                SpcRow(
                    index=len(rows),
                    line=start,
                    personas={
                        "User 1": [p.strip() for p in row[where[0]].split("\n") if p.strip()],
                        "User 2": [p.strip() for p in row[where[1]].split("\n") if p.strip()],
                    },
                    conversation=row[where[2]],
                    conversation_line=start + before,
                )
            )
            start = reader.line_num + 1
    except csv.Error as exc:
        raise located(src, reader.line_num, f"malformed CSV ({exc})", allowed) from None
    except StopIteration:
        raise located(src, 1, "no header row", allowed) from None
    if not rows:
        raise located(src, 2, "no data rows", allowed)
    return rows


def spc_speaker(name: str) -> str:
    for speaker in SPC_SPEAKERS:
        if speaker.casefold() == " ".join(name.split()).casefold():
            return speaker
    raise BuildError(f"--spc-speaker {name!r} is unknown; allowed: 'User 1', 'User 2'")


def pick_spc_row(rows: list[SpcRow], index: int, src: str) -> SpcRow:
    """Data row `index` (0 = first) of the file, or a BuildError naming the allowed range."""
    if not 0 <= index < len(rows):
        raise BuildError(
            f"{src}: --spc-row {index} is out of range; the file has rows 0 to {len(rows) - 1}"
        )
    return rows[index]


def parse_spc(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    rows = read_spc_rows(path, src)
    who = spc_speaker(options.spc_speaker)
    if options.spc_row is not None:
        rows = [pick_spc_row(rows, options.spc_row, src)]
    scenes: list[Scene] = []
    dropped: list[Dropped] = []
    for row in rows:
        lines, row_dropped = spc_turns(row, src)
        dropped += row_dropped
        renamed = [
            Line(options.character_name, line.text, src, line.line) if line.speaker == who else line
            for line in lines
        ]
        if renamed:
            scenes.append(Scene(f"{src}#row{row.index}", renamed))
    return ParsedSource(src, ".csv", scenes, dropped, read_text(path).count("\n") + 1)


def spc_turns(row: SpcRow, src: str) -> tuple[list[Line], list[Dropped]]:
    """The row's turns as Lines spoken by "User 1" / "User 2", and the lines left out: stage
    directions, and text before the first turn. Other lines continue the turn before them."""
    lines: list[Line] = []
    dropped: list[Dropped] = []
    for offset, text in enumerate(row.conversation.split("\n")):
        number = row.conversation_line + offset
        stripped = text.strip()
        if not stripped:
            continue
        match = _SPC_TURN.match(stripped)
        if match:
            lines.append(Line(spc_speaker(match[1]), match[2].strip(), src, number))
        elif _STAGE_DIRECTION.match(stripped) or re.fullmatch(r"[*\s]+", stripped):
            dropped.append(Dropped("stage direction", src, number, stripped))
        elif lines:
            last = lines[-1]
            lines[-1] = Line(last.speaker, f"{last.text} {stripped}", src, last.line)
        else:
            dropped.append(
                Dropped("not a speaker line (narration or direction)", src, number, stripped)
            )
    return lines, dropped

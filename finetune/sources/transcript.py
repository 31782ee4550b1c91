"""Plain transcripts (`.txt`) -> scenes.

* `NAME: text` on one line is a line by NAME (NAME: a letter first, at most 4 words and 40
  characters; a trailing parenthetical such as `GOKU (V.O.):` is dropped from the name).
* Play-script blocks: `NAME:` alone on its line, or `NAME` alone when it is written in capitals
  or is a name seen elsewhere with a colon (or a character name), followed by speech lines up to
  the next blank line. Speech lines of one block are joined with spaces; a line after a
  `NAME: text` line without a blank in between continues that speech too.
* ALL-CAPS names are shown in title case (`KRILLIN` -> `Krillin`).
* A new scene starts at a marker line (`---`, `***`, `* * *`, `===`, a `# heading`,
  `INT.`/`EXT.` headings, `Scene ...`, `[Scene ...]`, `Chapter ...`) and at a run of two or
  more blank lines.
* Other lines outside a block (narration, stage directions) are skipped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

from finetune.sources.common import (
    _STAGE_DIRECTION,
    Dropped,
    Line,
    ParsedSource,
    ParseOptions,
    _name_ok,
    _Scenes,
    display_name,
    named_line,
    read_text,
)

_SCENE_MARKER = re.compile(
    r"^(?:-{3,}|\*{3,}|(?:\*\s*){3,}|={3,}|~{3,}|#+\s.*|#+"
    r"|(?:INT|EXT|INT\./EXT|I/E)[.\s].*"
    r"|\[?\s*(?:scene|chapter)\b.*)$",
    re.IGNORECASE,
)


def parse_transcript(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    raw = read_text(path).split("\n")
    known = set(options.known_names)
    for text in raw:
        found = named_line(text)
        if found:
            known.add(found[0].casefold())
    builder = _Scenes(src)
    dropped: list[Dropped] = []
    speaker: str | None = None  # the open block's speaker
    block_line = False  # the last line added belongs to the open block
    blanks = 0
    for number, text in enumerate(raw, start=1):
        stripped = text.strip()
        if not stripped:
            blanks += 1
            speaker, block_line = None, False
            if blanks == 2 and builder.current is not None and builder.current.lines:
                builder.start()
            continue
        after_blank = blanks > 0 or number == 1
        blanks = 0
        if _SCENE_MARKER.match(stripped):
            if builder.current is None or builder.current.lines:
                builder.start()
            speaker, block_line = None, False
            continue
        found = named_line(stripped)
        if found and found[1]:
            speaker = found[0]
            builder.add(Line(speaker, found[1], src, number))
            block_line = True
            continue
        if found:  # `NAME:` alone: a play-script header
            speaker, block_line = found[0], False
            continue
        next_text = raw[number].strip() if number < len(raw) else ""
        if (
            after_blank
            and next_text
            and _name_ok(stripped)
            and (stripped.isupper() or stripped.casefold() in known)
        ):
            speaker, block_line = display_name(stripped), False
            continue
        if speaker is None:
            dropped.append(
                Dropped("not a speaker line (narration or direction)", src, number, text)
            )
            continue
        if _STAGE_DIRECTION.match(stripped):
            dropped.append(Dropped("stage direction", src, number, text))
            continue
        last = builder.last()
        if block_line and last is not None:
            builder.replace_last(Line(last.speaker, f"{last.text} {stripped}", src, last.line))
        else:
            builder.add(Line(speaker, stripped, src, number))
            block_line = True
    return ParsedSource(src, ".txt", builder.result(), dropped, len(raw))

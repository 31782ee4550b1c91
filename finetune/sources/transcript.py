"""Plain transcripts (`.txt`) -> scenes.

Two forms of speaker lines, which may be mixed in one file:

* Single-line form: `NAME: text` is a line by NAME (NAME: a letter first, at most 4 words and 40
  characters; a trailing parenthetical such as `GOKU (V.O.):` is dropped from the name). Lines
  without a name right after it continue that speech; the next `NAME: text` starts a new one.
* Block form (play scripts): a header line, then the speech on the lines below up to the next
  blank line, joined with spaces. A header is `NAME:` alone on its line, or NAME alone without a
  colon at the start of a paragraph (first line, after a blank line or a scene marker) with a
  non-blank line below, when NAME is written in capitals or is a known name. Outside any speech,
  `NAME:` may be longer: up to 8 words and 50 characters, names of 5 words or more written as a
  title (each word capitalised or a linking word such as `of`: `Ghost of King Henry VI:`) so
  that prose ending in a colon is not taken for a speaker. Right below a `NAME: text` line only
  the short form counts.
* Inside a block every line is speech, colons and all (`is risen: why stay we prating here?`,
  `Hear me, my lord:`), except: `NAME:` alone written in capitals or with a known name (the next
  speech, when no blank line separates them), `NAME: text` with a known name (likewise), a stage
  direction alone on its line (`(aside)`, skipped) and a scene marker other than `Scene ...` and
  `Chapter ...`, which are speech there (a verse line may begin so).
* Known names: the character names (`ParseOptions.known_names`) and every speaker that a first
  pass over the file finds with those alone; so a name becomes known by speaking elsewhere in
  the file, and verse with colons, which that pass reads as speech, adds none.
* ALL-CAPS names are shown in title case, Roman numerals and linking words after the first word
  kept (`GHOST OF KING HENRY VI` -> `Ghost of King Henry VI`).
* A new scene starts at a marker line (`---`, `***`, `* * *`, `===`, `~~~`, a `# heading`,
  `INT.`/`EXT.` headings, `Scene ...`, `[Scene ...]`, `Chapter ...`) and at a run of two or more
  blank lines. A file with no marker between two speeches (a heading before the first speech
  or a marker after the last does not count) is also cut so that no scene has more than
  `ParseOptions.scene_speeches` speeches (default 40; 0: no limit): a longer scene becomes equal
  parts, each a scene of its own (own id and split group); all scenes are then numbered
  `file#1`, `file#2`, ... in order. Files with markers keep their scenes, however long.
* Other lines outside a speech (narration, stage directions) are skipped and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

from finetune.sources.common import (
    _BAD_NAME_CHARS,
    _LINKING_WORDS,
    _STAGE_DIRECTION,
    Dropped,
    Line,
    ParsedSource,
    ParseOptions,
    Scene,
    _name_ok,
    _Scenes,
    display_name,
    named_line,
    read_text,
)

# Scene markers anywhere, even inside a speech block.
_MARKER = re.compile(
    r"^(?:-{3,}|\*{3,}|(?:\*\s*){3,}|={3,}|~{3,}|#+\s.*|#+"
    r"|(?:INT|EXT|INT\./EXT|I/E)[.\s].*"
    r"|\[\s*(?:scene|chapter)\b.*)$",
    re.IGNORECASE,
)
# `Scene ...`, `Chapter ...`: markers outside a block only, since a verse line may begin so.
_WORD_MARKER = re.compile(r"^(?:scene|chapter)\b.*$", re.IGNORECASE)
# `NAME:` alone, NAME up to 50 characters; a parenthetical before the colon is dropped.
_HEADER_LINE = re.compile(r"^(?P<name>[^\W\d_][^\n:]{0,49}?)\s*(?:\([^()]*\))?\s*:$")
_LONG_NAME_WORDS = 8
_LONG_NAME_CHARS = 50


def _long_name_ok(name: str) -> bool:
    """A block-form header name: up to 8 words; from 5 words on it must read as a title."""
    words = name.split()
    if len(words) <= 4:
        return _name_ok(name)
    return (
        len(words) <= _LONG_NAME_WORDS
        and len(name) <= _LONG_NAME_CHARS
        and not _BAD_NAME_CHARS.search(name)
        and all(word[0].isupper() or word.casefold() in _LINKING_WORDS for word in words)
    )


def _header(text: str, long: bool) -> str | None:
    """The speaker of a `NAME:` line with nothing after the colon, or None."""
    if not long:
        found = named_line(text)
        return found[0] if found and not found[1] else None
    match = _HEADER_LINE.match(text)
    if match and _long_name_ok(match["name"]):
        return display_name(match["name"])
    return None


class _Reader:
    """One pass over a transcript's lines. `known`: casefolded names taken as speakers."""

    def __init__(self, src: str, raw: list[str], known: set[str]) -> None:
        self.src, self.raw, self.known = src, raw, known
        self.builder = _Scenes(src)
        self.dropped: list[Dropped] = []
        self.marked: set[str] = set()  # ids of scenes that a marker line opened
        self.speaker: str | None = None  # the open speech's speaker
        self.in_block = False  # the speech was opened by a header: its lines are all speech
        self.block_line = False  # the last line added belongs to the open speech
        self.blanks = 0
        self.after_marker = False

    def read(self) -> _Reader:
        for number, text in enumerate(self.raw, start=1):
            self._line(number, text)
        return self

    def _line(self, number: int, text: str) -> None:
        stripped = text.strip()
        if not stripped:
            self._blank()
            return
        at_start = self.blanks > 0 or number == 1 or self.after_marker
        self.blanks, self.after_marker = 0, False
        if _MARKER.match(stripped) or (not self.in_block and _WORD_MARKER.match(stripped)):
            self._marker()
        elif self.in_block:
            self._block_line(stripped, number, text)
        else:
            self._free_line(stripped, number, text, at_start)

    def _blank(self) -> None:
        self.blanks += 1
        self._close()
        current = self.builder.current
        if self.blanks == 2 and current is not None and current.lines:
            self.builder.start()

    def _marker(self) -> None:
        current = self.builder.current
        if current is None or current.lines:
            current = self.builder.start()
        self.marked.add(current.id)
        self._close()
        self.after_marker = True

    def _block_line(self, stripped: str, number: int, text: str) -> None:
        header = _header(stripped, long=True)
        if header and (stripped.isupper() or header.casefold() in self.known):
            self._open(header)
            return
        found = named_line(stripped)
        if found and found[1] and found[0].casefold() in self.known:
            self._inline(found, number)
        elif _STAGE_DIRECTION.match(stripped):
            self.dropped.append(Dropped("stage direction", self.src, number, text))
        else:
            self._speech(stripped, number)

    def _free_line(self, stripped: str, number: int, text: str, at_start: bool) -> None:
        found = named_line(stripped)
        if found and found[1]:
            self._inline(found, number)
            return
        # Outside any speech a long name is fine; a continuation line of a `NAME: text` speech
        # ending in a colon is more likely text, so only the short form is taken there.
        header = _header(stripped, long=self.speaker is None)
        if header is None and at_start:
            header = self._bare_name(stripped, number)
        if header:
            self._open(header)
        elif self.speaker is None:
            reason = "not a speaker line (narration or direction)"
            self.dropped.append(Dropped(reason, self.src, number, text))
        elif _STAGE_DIRECTION.match(stripped):
            self.dropped.append(Dropped("stage direction", self.src, number, text))
        else:
            self._speech(stripped, number)

    def _bare_name(self, stripped: str, number: int) -> str | None:
        """A header without a colon: a capitalised or known name with speech below it."""
        has_next = number < len(self.raw) and bool(self.raw[number].strip())
        named = stripped.isupper() or stripped.casefold() in self.known
        return display_name(stripped) if has_next and named and _name_ok(stripped) else None

    def _open(self, speaker: str) -> None:
        self.speaker, self.in_block, self.block_line = speaker, True, False

    def _inline(self, found: tuple[str, str], number: int) -> None:
        self.speaker, self.in_block = found[0], False
        self.builder.add(Line(found[0], found[1], self.src, number))
        self.block_line = True

    def _speech(self, stripped: str, number: int) -> None:
        assert self.speaker is not None
        last = self.builder.last()
        if self.block_line and last is not None:
            joined = Line(last.speaker, f"{last.text} {stripped}", self.src, last.line)
            self.builder.replace_last(joined)
        else:
            self.builder.add(Line(self.speaker, stripped, self.src, number))
            self.block_line = True

    def _close(self) -> None:
        self.speaker, self.in_block, self.block_line = None, False, False

    def scenes(self, most: int) -> list[Scene]:
        scenes = self.builder.result()
        # A marker that opens the first scene (a title heading) splits no dialogue.
        if most <= 0 or any(scene.id in self.marked for scene in scenes[1:]):
            return scenes
        return _cut_long_scenes(scenes, most, self.src)


def _cut_long_scenes(scenes: list[Scene], most: int, src: str) -> list[Scene]:
    """Scenes of more than `most` lines -> equal parts of at most `most`, numbered anew."""
    if all(len(scene.lines) <= most for scene in scenes):
        return scenes  # ids unchanged
    parts: list[list[Line]] = []
    for scene in scenes:
        count = -(-len(scene.lines) // most)  # ceiling division
        size, extra = divmod(len(scene.lines), count)
        start = 0
        for index in range(count):
            end = start + size + (1 if index < extra else 0)
            parts.append(scene.lines[start:end])
            start = end
    return [Scene(f"{src}#{number}", lines) for number, lines in enumerate(parts, start=1)]


def parse_transcript(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    raw = read_text(path).split("\n")
    known = set(options.known_names)
    # The first pass finds who speaks, so that the second knows those names wherever they appear
    # (a bare `Goku` header, `Goku: text` inside a block) while verse with colons adds none.
    first = _Reader(src, raw, set(known)).read()
    known |= {line.speaker.casefold() for scene in first.builder.result() for line in scene.lines}
    reader = _Reader(src, raw, known).read()
    scenes = reader.scenes(options.scene_speeches)
    return ParsedSource(src, ".txt", scenes, reader.dropped, len(raw))

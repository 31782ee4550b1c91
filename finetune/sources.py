"""Parsers: dialogue files -> scenes (lists of speaker lines with file and line number).

Every parser returns a `ParsedSource`: scenes in file order, plus the lines it skipped and why.
An example never crosses a scene, so the scene rules below decide what counts as "context".
Markup of the format itself is removed here; general cleaning is in `finetune.cleaning`.

Plain transcripts (`.txt`)
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

Ren'Py (`.rpy`)
  * Characters come from `define x = Character("Name", ...)` (also `_("Name")`, `name=`,
    `kind=other` inheriting the name, `DynamicCharacter("var")`, and plain `x = Character(...)` in
    python blocks), collected from every `.rpy` source of the build first, so a game split over
    files works. `default`/`define var = "text"` gives values for `[var]`.
  * Say statements: `x "..."`, `x happy "..."` (attributes and `@` ignored), `"Name" "..."`,
    a string alone (narration, speaker "Narrator", or dropped with `narration="drop"`),
    `narrator`/`centered` and nameless characters also narrate, `extend "..."` appends to the
    previous line. Trailing `with x`, `id x`, `nointeract`, `(args)` are ignored.
  * Text tags (`{b}`, `{w}`, `{p}`, `{nw}`, `{color=...}`, `{a=...}`...) are removed, `{{` and
    `[[` are literal braces; `[var]` becomes the variable's default/define string value, or
    else its name (`[player.name!t]` -> `player name`). `\\n` and whitespace runs become a space.
  * Every `label` starts a scene. In a `menu:`, each choice starts a scene (same split group as
    its label) that opens with up to 6 lines before the choice as context only (never replies),
    then the choice text said by the player (`player_name`, default "Player"); after the menu a
    new scene starts. `if`/`else` branches are read in order.
  * `screen`, `python`, `init python`, `transform`, `style`, `image`, `translate`,
    `layeredimage` and `testcase` blocks are skipped. A say statement whose speaker variable is
    not defined is an error (unless the variable is in `known_names`); a line that starts like
    dialogue but cannot be parsed is skipped and counted.

Subtitles
  * `.ass`/`.ssa`: `Dialogue:` lines of `[Events]` (columns from its `Format:` line), sorted by
    start time; the Name field is the speaker (empty: skipped and counted); `{...}` override
    tags removed, `\\N`, `\\n`, `\\h` become spaces.
  * `.srt`: cues whose text begins `NAME:` (a `- ` dash before it is allowed, and a cue may hold
    several named lines); a cue or cue line without a name continues the previous speaker of the
    same scene, and is skipped (counted) at the start of a scene. `<i>` and `{\\an8}` tags are
    removed.
  * In both, `[...]` sound tags and directions (`[laughs]`) are removed, and a gap of more
    than `scene_gap` seconds between cues starts a new scene.

JSON lines (`.jsonl`), one object per line, each line its own scene:
  * Q&A: `{"user": "...", "character": "..."}` -> "User" then the character.
  * chat: `{"scene": "optional id", "messages": [{"name": "Krillin", "content": "..."}, ...]}`;
    a message may give `role` (`user` -> "User", `assistant` -> the character, `system` skipped)
    instead of `name`. Lines with the same `scene` value form one split group.

Synthetic-Persona-Chat CSV (`.csv`): columns `user 1 personas`, `user 2 personas`,
  `Best Generated Conversation`; each row is a scene of `User 1: ...`/`User 2: ...` lines (a
  leading `*` is ignored, `[...]` lines are stage directions, other lines continue the previous
  turn). `spc_speaker` ("User 2" by default) is renamed to the character; the other keeps its
  name. `spc_row` (0 = first data row) keeps only that row.

SillyTavern cards (`.json`, `.png`) are read by `finetune.cards`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
MENU_CONTEXT_LINES = 6


class BuildError(Exception):
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


def display_name(name: str) -> str:
    """Speaker names as shown: whitespace collapsed, ALL CAPS in title case."""
    name = " ".join(name.split())
    return name.title() if name.isupper() and len(name) > 1 else name


def named_line(text: str) -> tuple[str, str] | None:
    """`NAME: text` -> (NAME, text); text may be empty for a `NAME:` header."""
    match = _NAMED_LINE.match(text.strip())
    if not match or not _name_ok(match["name"]):
        return None
    return display_name(match["name"]), (match["text"] or "").strip()


def strip_brackets(text: str) -> str:
    """Remove bracketed stage directions and sound tags: `[laughs]`."""
    return re.sub(r"\[[^\]]*\]", " ", text)


# -- plain transcripts ------------------------------------------------------------------------

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


# -- subtitles --------------------------------------------------------------------------------

_SRT_TIME = re.compile(
    r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*-->\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
)
_HTML_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_ASS_TAG = re.compile(r"\{[^}]*\}")


def _seconds(h: str, m: str, s: str, frac: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(frac) / 10 ** len(frac)


def _subtitle_text(text: str) -> str:
    text = _ASS_TAG.sub("", _HTML_TAG.sub("", text))
    return strip_brackets(re.sub(r"\\[Nnh]", " ", text)).strip()


def parse_srt(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    raw = read_text(path).split("\n")
    builder = _Scenes(src)
    dropped: list[Dropped] = []
    previous_end: float | None = None
    block: list[tuple[int, str]] = []

    def flush(block: list[tuple[int, str]]) -> None:
        nonlocal previous_end
        timing = next((i for i, (_, t) in enumerate(block[:3]) if _SRT_TIME.search(t)), None)
        if timing is None:
            raise located(
                src,
                block[0][0],
                f"not a subtitle cue: {block[0][1][:60]!r}",
                "each SRT cue is an index, a time line like `00:00:01,000 --> 00:00:02,500` "
                "and text, separated by blank lines",
            )
        times = _SRT_TIME.search(block[timing][1])
        assert times is not None
        start, end = _seconds(*times.groups()[:4]), _seconds(*times.groups()[4:])
        if previous_end is None or start - previous_end > options.scene_gap:
            builder.start()
        previous_end = end
        for number, text in block[timing + 1 :]:
            text = _subtitle_text(text)
            text = re.sub(r"^-\s*", "", text)
            if not text:
                continue
            found = named_line(text)
            if found and found[1]:
                builder.add(Line(found[0], found[1], src, number))
                continue
            last = builder.last()
            if last is None:
                dropped.append(Dropped("subtitle without a speaker name", src, number, text))
            elif last.line in {n for n, _ in block}:  # same cue: one line wrapped
                builder.replace_last(Line(last.speaker, f"{last.text} {text}", src, last.line))
            else:
                builder.add(Line(last.speaker, text, src, number))

    for number, text in enumerate(raw, start=1):
        if text.strip():
            block.append((number, text.strip()))
        elif block:
            flush(block)
            block = []
    if block:
        flush(block)
    return ParsedSource(src, ".srt", builder.result(), dropped, len(raw))


_ASS_DEFAULT_FORMAT = [
    "layer",
    "start",
    "end",
    "style",
    "name",
    "marginl",
    "marginr",
    "marginv",
    "effect",
    "text",
]
_ASS_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[.,](\d{1,3})\s*$")


def parse_ass(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    raw = read_text(path).split("\n")
    section = ""
    columns = _ASS_DEFAULT_FORMAT
    cues: list[tuple[float, float, int, str, str]] = []
    for number, text in enumerate(raw, start=1):
        stripped = text.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped.lower()
            continue
        if section != "[events]" or ":" not in stripped:
            continue
        kind, _, rest = stripped.partition(":")
        if kind.strip().lower() == "format":
            columns = [c.strip().lower() for c in rest.split(",")]
            if "text" not in columns or "start" not in columns:
                raise located(
                    src,
                    number,
                    "Format line without Start and Text",
                    "e.g. `Format: Layer, "
                    "Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text`",
                )
            continue
        if kind.strip().lower() != "dialogue":
            continue
        values = rest.strip().split(",", len(columns) - 1)
        if len(values) != len(columns):
            raise located(
                src,
                number,
                f"Dialogue line has {len(values)} fields, the Format line {len(columns)}",
                "fields are separated by commas; only the last (Text) may contain commas",
            )
        row = dict(zip(columns, values, strict=True))
        times = [_ASS_TIME.match(row.get(key, "")) for key in ("start", "end")]
        if not times[0] or not times[1]:
            raise located(src, number, "bad Start/End time", "times look like 0:01:02.50")
        start, end = (_seconds(*t.groups()) for t in times)  # type: ignore[union-attr]
        cues.append((start, end, number, row.get("name", "").strip(), row["text"]))
    if not cues:
        raise located(src, 1, "no Dialogue lines", "an .ass file needs an [Events] section")
    builder = _Scenes(src)
    dropped: list[Dropped] = []
    previous_end: float | None = None
    for start, end, number, name, text in sorted(cues, key=lambda c: (c[0], c[2])):
        if previous_end is None or start - previous_end > options.scene_gap:
            builder.start()
        previous_end = max(end, previous_end or end)
        text = _subtitle_text(text)
        if not name:
            dropped.append(Dropped("subtitle without a speaker name", src, number, text))
            continue
        if text:
            builder.add(Line(display_name(name), text, src, number))
    return ParsedSource(src, ".ass", builder.result(), dropped, len(raw))


# -- JSON lines -------------------------------------------------------------------------------

_JSONL_ALLOWED = (
    'each line is {"user": "...", "character": "..."} or '
    '{"scene": "id", "messages": [{"name": "...", "content": "..."}, ...]}'
)


def parse_jsonl(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    raw = read_text(path).split("\n")
    scenes: list[Scene] = []
    dropped: list[Dropped] = []
    seen_ids: set[str] = set()
    for number, text in enumerate(raw, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise located(
                src, number, f"malformed JSON ({exc.msg} at column {exc.colno})", _JSONL_ALLOWED
            ) from None
        if not isinstance(record, dict):
            raise located(src, number, "not a JSON object", _JSONL_ALLOWED)
        if "messages" in record:
            messages = record["messages"]
            if not isinstance(messages, list) or not messages:
                raise located(src, number, "'messages' must be a non-empty list", _JSONL_ALLOWED)
            label = record.get("scene")
            group = f"{src}:{label}" if label not in (None, "") else f"{src}#{number}"
            scene_id = group if group not in seen_ids else f"{group}#{number}"
            seen_ids.add(scene_id)
            scene = Scene(scene_id, group=group)
            for index, message in enumerate(messages):
                speaker = _message_speaker(message, options, src, number, index)
                if speaker is None:
                    dropped.append(Dropped("system message", src, number, str(message)[:80]))
                    continue
                scene.lines.append(Line(speaker, message["content"], src, number))
            scenes.append(scene)
        elif "user" in record and "character" in record:
            if not all(isinstance(record[k], str) for k in ("user", "character")):
                raise located(src, number, "'user' and 'character' must be strings", _JSONL_ALLOWED)
            scenes.append(
                Scene(
                    f"{src}#{number}",
                    [
                        Line(USER, record["user"], src, number),
                        Line(options.character_name, record["character"], src, number),
                    ],
                )
            )
        else:
            keys = ", ".join(sorted(record)) or "none"
            raise located(src, number, f"unknown record (keys: {keys})", _JSONL_ALLOWED)
    if not scenes:
        raise located(src, 1, "no records", _JSONL_ALLOWED)
    return ParsedSource(src, ".jsonl", scenes, dropped, len(raw))


def _message_speaker(
    message: object, options: ParseOptions, src: str, number: int, index: int
) -> str | None:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise located(src, number, f"{where} needs a string 'content'", _JSONL_ALLOWED)
    name = message.get("name")
    if isinstance(name, str) and name.strip():
        return " ".join(name.split())
    role = message.get("role")
    if role == "user":
        return USER
    if role == "assistant":
        return options.character_name
    if role == "system":
        return None
    raise located(
        src, number, f"{where} has no 'name'", "give 'name', or 'role' user/assistant/system"
    )


# -- Synthetic-Persona-Chat CSV ---------------------------------------------------------------

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


def parse_spc(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    rows = read_spc_rows(path, src)
    who = spc_speaker(options.spc_speaker)
    if options.spc_row is not None:
        if not 0 <= options.spc_row < len(rows):
            raise BuildError(
                f"{src}: --spc-row {options.spc_row} is out of range; the file has rows "
                f"0 to {len(rows) - 1}"
            )
        rows = [rows[options.spc_row]]
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


# -- Ren'Py -----------------------------------------------------------------------------------


@dataclass
class RenpyDefinitions:
    """Character variables -> display name (None: narrates) and string variables -> value."""

    characters: dict[str, str | None] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)


_QUOTES = "\"'`"


def _logical_lines(text: str) -> Iterator[tuple[int, int, str]]:
    """(first line number, indent, code) with comments removed; strings and brackets that span
    several physical lines are joined into one logical line."""
    buffer: list[str] = []
    start = indent = 0
    quote = ""  # the open string's delimiter
    depth = 0
    for number, physical in enumerate(text.split("\n"), start=1):
        if not buffer:
            if not physical.strip():
                continue
            start, indent = number, len(physical) - len(physical.lstrip(" \t"))
        i, out = 0, []
        while i < len(physical):
            char = physical[i]
            if quote:
                if char == "\\":
                    out.append(physical[i : i + 2])
                    i += 2
                    continue
                if physical.startswith(quote, i):
                    out.append(quote)
                    i += len(quote)
                    quote = ""
                    continue
            elif char == "#":
                break
            elif char in _QUOTES:
                quote = char * 3 if physical.startswith(char * 3, i) else char
                out.append(quote)
                i += len(quote)
                continue
            elif char in "([{":
                depth += 1
            elif char in ")]}":
                depth = max(0, depth - 1)
            out.append(char)
            i += 1
        buffer.append("".join(out))
        if not quote and depth == 0:
            code = "\n".join(buffer).strip()
            buffer = []
            if code:
                yield start, indent, code
    if buffer and "\n".join(buffer).strip():
        yield start, indent, "\n".join(buffer).strip()


_ESCAPES = {
    "n": " ",
    "t": " ",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "`": "`",
    "%": "%",
    "[": "[[",
    "{": "{{",
}


def _read_string(code: str, i: int) -> tuple[str, int] | None:
    """Parse the Ren'Py string literal starting at code[i]; (value, index after it) or None."""
    char = code[i] if i < len(code) else ""
    if char not in _QUOTES:
        return None
    quote = char * 3 if code.startswith(char * 3, i) else char
    i += len(quote)
    out: list[str] = []
    while i < len(code):
        if code[i] == "\\" and i + 1 < len(code):
            out.append(_ESCAPES.get(code[i + 1], code[i + 1]))
            i += 2
            continue
        if code.startswith(quote, i):
            return " ".join("".join(out).split()), i + len(quote)
        out.append(code[i])
        i += 1
    return None


_IDENT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CHARACTER_CALL = re.compile(
    r"^(?:define\s+(?:-?\d+\s+)?)?\$?\s*(?P<var>[A-Za-z_][\w.]*)\s*=\s*"
    r"(?P<kind>DynamicCharacter|Character|ADVCharacter|NVLCharacter)\s*\((?P<args>.*)\)\s*$",
    re.DOTALL,
)
_STRING_VAR = re.compile(
    r"^(?:define|default)\s+(?:-?\d+\s+)?(?P<var>[A-Za-z_][\w.]*)\s*=\s*(?P<value>.+)$",
    re.DOTALL,
)


def _split_args(args: str) -> list[str]:
    """Top-level comma-separated arguments of a call (strings and brackets respected)."""
    parts, depth, i, start = [], 0, 0, 0
    while i < len(args):
        char = args[i]
        if char in _QUOTES:
            parsed = _read_string(args, i)
            i = parsed[1] if parsed else len(args)
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(args[start:i].strip())
            start = i + 1
        i += 1
    parts.append(args[start:].strip())
    return [p for p in parts if p]


def _string_value(expr: str) -> str | None:
    """`"Name"`, `_("Name")`, `__('Name')` -> Name; anything else None."""
    expr = expr.strip()
    match = re.fullmatch(r"_{1,2}\s*\((.*)\)", expr, re.DOTALL)
    if match:
        expr = match[1].strip()
    parsed = _read_string(expr, 0) if expr else None
    if parsed and not expr[parsed[1] :].strip():
        return parsed[0]
    return None


def renpy_definitions(paths: Iterable[Path]) -> RenpyDefinitions:
    """Characters and string variables defined anywhere in these scripts."""
    raw: dict[str, tuple[str, str | None, str | None]] = {}  # var -> (call, name, kind)
    defs = RenpyDefinitions()
    for path in paths:
        for _, _, code in _logical_lines(read_text(path)):
            match = _CHARACTER_CALL.match(code)
            if match:
                name: str | None = None
                kind: str | None = None
                for index, arg in enumerate(_split_args(match["args"])):
                    key, eq, value = arg.partition("=")
                    if eq and re.fullmatch(r"\s*\w+\s*", key) and not value.startswith("="):
                        if key.strip() == "name":
                            name = _string_value(value)
                        elif key.strip() == "kind":
                            kind = value.strip()
                    elif index == 0:
                        name = _string_value(arg)
                raw[match["var"]] = (match["kind"], name, kind)
                continue
            match = _STRING_VAR.match(code)
            if match:
                value = _string_value(match["value"])
                if value is not None:
                    defs.variables[match["var"]] = value

    def resolve(var: str, seen: tuple[str, ...] = ()) -> str | None:
        call, name, kind = raw[var]
        if call == "DynamicCharacter" and name is not None:
            return defs.variables.get(name, name)
        if name is None and kind in raw and kind not in seen:
            return resolve(kind, (*seen, var))
        return name

    for var in raw:
        name = resolve(var)
        defs.characters[var] = _renpy_text(name, defs.variables) if name else None
    return defs


_TAG = re.compile(r"\{[^{}]*\}")
_SUBST = re.compile(r"\[([^\[\]]*)\]")


def _renpy_text(text: str, variables: dict[str, str]) -> str:
    """Remove text tags, interpolate `[var]`, keep `{{`/`[[` as literal brackets."""
    text = text.replace("{{", "\x00").replace("[[", "\x01")
    text = re.sub(r"\{/?(?:p|w|nw|fast|done)(?:=[^}]*)?\}", " ", text)  # pauses: a space
    text = _TAG.sub("", text)

    def substitute(match: re.Match[str]) -> str:
        expr = re.split(r"[!:]", match[1], maxsplit=1)[0].strip()
        if expr in variables:
            return _TAG.sub("", variables[expr])
        return " ".join(re.findall(r"[A-Za-z0-9]+", expr.replace("_", " ")))

    text = _SUBST.sub(substitute, text)
    text = text.replace("\x00", "{").replace("\x01", "[").replace("%%", "%")
    return " ".join(text.split())


# Statements that are never a say statement (their first word is not a speaker).
_KEYWORD_WORDS = """
show scene hide with play queue stop voice sound music pause jump call return label menu define
default image init python transform screen style translate window nvl if elif else while for pass
camera at as behind onlayer zorder expression layeredimage testcase early renpy text textbutton
imagebutton add use vbox hbox frame key timer tooltip has fixed grid viewport vpgrid button bar
vbar null input mousearea showif on action hotspot imagemap side drag draggroup transclude
outlines rpy set config store python_early audio
"""
RENPY_KEYWORDS = frozenset(_KEYWORD_WORDS.split())

_SKIP_BLOCK = re.compile(
    r"^(?:init(?:\s+-?\d+)?\s+python\b|python\b|screen\b|transform\b|style\b|image\b"
    r"|layeredimage\b|translate\b|testcase\b).*:$"
)
_NARRATORS = frozenset({"narrator", "centered", "vcentered"})
_TRAILING = re.compile(r"^(?:\s*(?:with\s+\S+|id\s+\S+|nointeract|\(.*\)))*\s*$", re.DOTALL)


@dataclass
class _Say:
    who: str | None  # variable name, or None for a narration string
    who_literal: str | None  # "Name" "..." form
    what: str


def _parse_say(code: str) -> _Say | str | None:
    """A say statement; "choice:<text>" for a menu choice; "?" if it looks like dialogue but
    cannot be parsed; None if it is some other statement."""
    if code[0] in _QUOTES:
        first = _read_string(code, 0)
        if first is None:
            return "?"
        rest = code[first[1] :].strip()
        if rest.endswith(":") and (rest == ":" or rest.startswith("if ")):
            return "choice:" + first[0]
        if rest and rest[0] in _QUOTES:
            second = _read_string(rest, 0)
            if second is None or not _TRAILING.match(rest[second[1] :]):
                return "?"
            return _Say(None, first[0], second[0])
        return _Say(None, None, first[0]) if _TRAILING.match(rest) else "?"
    match = _IDENT.match(code)
    if not match or match[0] in RENPY_KEYWORDS or code.endswith(":"):
        return None
    i = match.end()
    # Attributes (`happy`, `-sad`, `@ vhappy`) until the string.
    attrs = re.compile(r"\s+(?:@\s*)?-?[\w]+")
    while True:
        while i < len(code) and code[i] == " ":
            i += 1
        if i < len(code) and code[i] in _QUOTES:
            break
        step = attrs.match(code, i - 1 if i and code[i - 1] == " " else i)
        if not step or step.end() <= i:
            return None
        i = step.end()
    said = _read_string(code, i)
    if said is None:
        return "?"
    if not _TRAILING.match(code[said[1] :]):
        return None  # e.g. `textbutton "Hi" action Return()`: not dialogue
    return _Say(match[0], None, said[0])


@dataclass
class _Menu:
    indent: int
    item_indent: int | None = None
    context: list[Line] | None = None
    choices: int = 0
    number: int = 0


def parse_renpy(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    text = read_text(path)
    defs = options.renpy or renpy_definitions([path])
    builder = _Scenes(src)
    dropped: list[Dropped] = []
    label = "(top)"
    menus: list[_Menu] = []
    menu_count = 0
    skip_indent: int | None = None
    known = options.known_names

    def speaker_of(say: _Say, number: int) -> str | None:
        if say.who_literal is not None:
            return _renpy_text(say.who_literal, defs.variables) or NARRATOR
        if say.who is None or say.who in _NARRATORS:
            return NARRATOR
        if say.who in defs.characters:
            return defs.characters[say.who] or NARRATOR
        if say.who.casefold() in known:
            return say.who
        raise located(
            src,
            number,
            f"unknown speaker '{say.who}' (no `define {say.who} = Character(...)` in the sources)",
            "add the .rpy file that defines it, or pass --speaker "
            f"{say.who} if these are the character's lines",
        )

    for number, indent, code in _logical_lines(text):
        if skip_indent is not None:
            if indent > skip_indent:
                continue
            skip_indent = None
        closed: _Menu | None = None
        while menus and indent <= menus[-1].indent:
            closed = menus.pop()
        match = re.match(r"^label\s+([\w.]+)", code)
        if match:
            name = match[1]
            label = label.split(".")[0] + name if name.startswith(".") else name
            builder.start(f"{src}:{label}")
            menus.clear()
            continue
        if closed is not None:
            after = f"{src}:{label}/after-menu{closed.number}"
            builder.start(after, group=f"{src}:{label}")
        if _SKIP_BLOCK.match(code):
            skip_indent = indent
            continue
        if re.match(r"^menu(?:\s+\w+)?\s*(?:\(.*\))?\s*:$", code):
            menu_count += 1
            menus.append(_Menu(indent, number=menu_count))
            continue
        if code.startswith(("$", "define ", "default ")):
            continue
        menu = menus[-1] if menus else None
        if menu is not None and menu.item_indent is None:
            menu.item_indent = indent
        say = _parse_say(code)
        if isinstance(say, str) and say.startswith("choice:"):
            if menu is None or indent != menu.item_indent:
                dropped.append(Dropped("Ren'Py: menu choice outside a menu", src, number, code))
                continue
            if menu.context is None:
                last_lines = builder.current.lines if builder.current else []
                menu.context = [
                    Line(ln.speaker, ln.text, ln.source, ln.line, context_only=True)
                    for ln in last_lines[-MENU_CONTEXT_LINES:]
                ]
            menu.choices += 1
            scene = builder.start(
                f"{src}:{label}/menu{menu.number}.{menu.choices}", group=f"{src}:{label}"
            )
            scene.lines.extend(menu.context)
            choice = _renpy_text(say[len("choice:") :], defs.variables)
            if choice:
                builder.add(Line(options.player_name, choice, src, number))
            continue
        if say == "?":
            dropped.append(
                Dropped("Ren'Py: dialogue line that cannot be parsed", src, number, code)
            )
            continue
        if not isinstance(say, _Say):
            continue
        what = _renpy_text(say.what, defs.variables)
        if say.who == "extend":
            last = builder.last()
            if last is None or last.context_only:
                dropped.append(
                    Dropped("Ren'Py: extend without a line before it", src, number, code)
                )
            elif what:
                builder.replace_last(Line(last.speaker, f"{last.text} {what}", src, last.line))
            continue
        speaker = speaker_of(say, number)
        if speaker == NARRATOR and options.narration == "drop":
            dropped.append(Dropped("narration (dropped by option)", src, number, what))
            continue
        if builder.current is None:
            builder.start(f"{src}:{label}")
        builder.add(Line(speaker or NARRATOR, what, src, number))
    return ParsedSource(src, ".rpy", builder.result(), dropped, text.count("\n") + 1)


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

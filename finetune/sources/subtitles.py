"""Subtitles (`.ass`/`.ssa`, `.srt`) -> scenes.

* `.ass`/`.ssa`: `Dialogue:` lines of `[Events]` (columns from its `Format:` line), sorted by
  start time; the Name field is the speaker (empty: skipped and counted); `{...}` override
  tags removed, `\\N`, `\\n`, `\\h` become spaces.
* `.srt`: cues whose text begins `NAME:` (a `- ` dash before it is allowed, and a cue may hold
  several named lines); a cue or cue line without a name continues the previous speaker of the
  same scene, and is skipped (counted) at the start of a scene. `<i>` and `{\\an8}` tags are
  removed.
* In both, `[...]` sound tags and directions (`[laughs]`) are removed, and a gap of more
  than `scene_gap` seconds between cues starts a new scene.
"""

from __future__ import annotations

import re
from pathlib import Path

from finetune.sources.common import (
    Dropped,
    Line,
    ParsedSource,
    ParseOptions,
    _Scenes,
    display_name,
    located,
    named_line,
    read_text,
    strip_brackets,
)

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

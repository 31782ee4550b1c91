"""Plain transcripts (`.txt`): `finetune.sources.transcript`."""

from __future__ import annotations

from finetune.sources import (
    ParseOptions,
    parse_source,
)
from tests.finetune_helpers import FIXTURES


def test_transcript_lines_blocks_and_scene_markers():
    parsed = parse_source(FIXTURES / "transcript.txt", ParseOptions(), "t.txt")
    assert [[ln.speaker for ln in s.lines] for s in parsed.scenes] == [
        ["Goku", "Krillin", "Goku", "Krillin", "Goku"],  # `* * *` ends the first scene
        ["Bulma", "Goku"],  # two blank lines end the second
        ["Chi-Chi", "Goku"],
    ]
    first = parsed.scenes[0].lines
    # A play-script block (KRILLIN alone, then speech up to the blank line) is one line.
    assert first[3].text == "Fine, but no Kamehameha this time. I mean it, Goku."
    assert (first[3].line, first[4].text) == (6, "No promises!")
    # A line without a name right after a `NAME: text` line continues it.
    assert parsed.scenes[1].lines[1].text == "Nope! But I found some food in it. Was that bad?"
    assert {(d.reason, d.line) for d in parsed.dropped} == {
        ("stage direction", 10),
        ("not a speaker line (narration or direction)", 13),
    }

"""Synthetic-Persona-Chat CSV: `finetune.sources.spc`."""

from __future__ import annotations

from finetune.sources import (
    ParseOptions,
    parse_source,
)
from tests.finetune_helpers import (
    FIXTURES,
    lines_of_scene,
)


def test_persona_chat_csv_rows_speakers_and_line_numbers():
    options = ParseOptions(character_name="Chef", spc_speaker="User 2")
    parsed = parse_source(FIXTURES / "persona_chat.csv", options, "pc.csv")
    assert [s.id for s in parsed.scenes] == ["pc.csv#row0", "pc.csv#row1"]
    assert lines_of_scene(parsed.scenes[0]) == [
        ("User 1", "Hi, what do you do?"),
        ("Chef", "I'm a chef. I cook spicy food all day."),
        ("User 1", "Spicy! I could never."),
        ("Chef", "You get used to it. It just takes practice."),  # continuation line joined
    ]
    # Line numbers point into the file, inside the multi-line conversation cell.
    assert [ln.line for ln in parsed.scenes[0].lines] == [4, 5, 6, 8]
    assert (parsed.dropped[0].reason, parsed.dropped[0].line) == ("stage direction", 7)
    # `* User 1:` (a stray asterisk) is still User 1; the other side plays the character.
    other = parse_source(
        FIXTURES / "persona_chat.csv", ParseOptions(character_name="Fan", spc_speaker="User 1"), "x"
    )
    assert [ln.speaker for ln in other.scenes[1].lines] == ["Fan", "User 2", "Fan", "User 2"]

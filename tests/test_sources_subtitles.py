"""Subtitles (`.srt`, `.ass`): `finetune.sources.subtitles`."""

from __future__ import annotations

from finetune.sources import (
    ParseOptions,
    parse_source,
)
from tests.finetune_helpers import (
    FIXTURES,
    lines_of_scene,
)


def test_subtitles_srt_names_continuations_and_gaps():
    parsed = parse_source(FIXTURES / "episode.srt", ParseOptions(scene_gap=10), "e.srt")
    assert [lines_of_scene(s) for s in parsed.scenes] == [
        [
            ("Vegeta", "Kakarot!"),
            ("Goku", "Hey, Vegeta! What's up?"),  # two text lines of one cue
            ("Vegeta", "We fight. Now."),
            ("Vegeta", "Right now, I said!"),  # no name: the previous speaker goes on
        ],
        [("Bulma", "You two, stop it!"), ("Goku", "Sorry, Bulma!"), ("Vegeta", "Hmph.")],
    ]
    # After the 23 s gap a cue without a name has nobody to continue.
    assert [(d.reason, d.line) for d in parsed.dropped] == [("subtitle without a speaker name", 20)]
    # A longer allowed gap keeps it in one scene, so the nameless cue is Vegeta's.
    parsed = parse_source(FIXTURES / "episode.srt", ParseOptions(scene_gap=60), "e.srt")
    assert len(parsed.scenes) == 1 and parsed.dropped == []
    assert parsed.scenes[0].lines[4].speaker == "Vegeta"


def test_subtitles_ass_name_field_tags_and_order():
    parsed = parse_source(FIXTURES / "episode.ass", ParseOptions(), "e.ass")
    assert [lines_of_scene(s) for s in parsed.scenes] == [
        [
            ("Gohan", "Dad, are you hungry again?"),  # sorted by start time
            ("Goku", "I'm starving! Anybody got food?"),  # {\i1} gone, \N a space
            ("Chi-Chi", "Lunch is ready, you two."),
        ],
        [("Gohan", "Much later, Dad."), ("Goku", "Huh, already?")],
    ]
    assert [(d.reason, d.line) for d in parsed.dropped] == [("subtitle without a speaker name", 14)]

"""Plain transcripts (`.txt`): `finetune.sources.transcript`."""

from __future__ import annotations

from pathlib import Path

from finetune.sources import (
    ParsedSource,
    ParseOptions,
    display_name,
    parse_source,
)
from tests.finetune_helpers import FIXTURES

# A play in block form written for these tests: no scene markers, 95 speeches in three parts
# (50, 28 and 17) separated by two blank lines, verse lines with colons, long ALL-CAPS names.
PLAY = Path(__file__).parent / "fixtures" / "transcript" / "play_block.txt"


def parse_text(tmp_path: Path, text: str, **options) -> ParsedSource:
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    return parse_source(path, ParseOptions(**options), "t.txt")


def spoken(parsed: ParsedSource) -> list[tuple[str, str]]:
    return [(ln.speaker, ln.text) for scene in parsed.scenes for ln in scene.lines]


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


# -- scenes -----------------------------------------------------------------------------------


def test_play_without_markers_is_cut_into_scenes_of_at_most_40_speeches():
    parsed = parse_source(PLAY, ParseOptions(), "play.txt")
    # The first part (50 speeches) becomes two equal scenes; two blank lines still end a scene.
    assert [len(s.lines) for s in parsed.scenes] == [25, 25, 28, 17]
    assert [s.id for s in parsed.scenes] == [f"play.txt#{n}" for n in range(1, 5)]
    assert len({s.group for s in parsed.scenes}) == 4  # each part goes to train or eval alone
    second = parsed.scenes[1].lines[0]
    assert (second.speaker, second.line) == ("King Richard III", 101)  # 26th speech


def test_scene_speeches_option_and_files_with_markers(tmp_path):
    def sizes(parsed: ParsedSource) -> list[int]:
        return [len(s.lines) for s in parsed.scenes]

    by_ten = [10] * 5 + [10, 9, 9] + [9, 8]  # each part in equal pieces of at most 10
    assert sizes(parse_source(PLAY, ParseOptions(scene_speeches=10), "p")) == by_ten
    assert sizes(parse_source(PLAY, ParseOptions(scene_speeches=0), "p")) == [50, 28, 17]
    dialogue = "\n".join(f"Ann: Line {i}?\nBob: Reply {i}." for i in range(30))
    # A marker between speeches: the file's own scenes are kept, however long.
    assert sizes(parse_text(tmp_path, f"{dialogue}\n---\nAnn: End?\nBob: End.")) == [60, 2]
    # A heading before the first speech or a divider after the last is no scene split.
    assert sizes(parse_text(tmp_path, f"# Title\n{dialogue}\n***\n")) == [30, 30]


def test_scene_words_inside_a_block_are_speech_dividers_are_not(tmp_path):
    text = "GOKU:\nChapter one of my life: training!\nScene two: eating.\n[Scene 2]\nKRILLIN:\nOk."
    parsed = parse_text(tmp_path, text)
    assert [[(ln.speaker, ln.text) for ln in s.lines] for s in parsed.scenes] == [
        [("Goku", "Chapter one of my life: training! Scene two: eating.")],
        [("Krillin", "Ok.")],
    ]
    # In the play, a verse line beginning with "Scene" neither splits the speech nor the file.
    lines = {ln.line: ln for s in parse_source(PLAY, ParseOptions(), "p").scenes for ln in s.lines}
    assert lines[119].text.startswith("Scene of my youth, this hall was warm with song; now")
    # The line after a marker starts a paragraph: an ALL-CAPS name alone opens a block there.
    assert spoken(parse_text(tmp_path, "---\nKRILLIN\nFine.")) == [("Krillin", "Fine.")]


# -- speaker lines ----------------------------------------------------------------------------


def test_colons_inside_a_block_are_speech(tmp_path):
    text = "GLOUCESTER:\nis risen: why stay we here?\nHear me, my lord:\nthe horses wait.\n\n"
    text += "HASTINGS:\nThen go.\n"
    assert spoken(parse_text(tmp_path, text)) == [
        ("Gloucester", "is risen: why stay we here? Hear me, my lord: the horses wait."),
        ("Hastings", "Then go."),
    ]
    lines = {ln.line: ln for s in parse_source(PLAY, ParseOptions(), "p").scenes for ln in s.lines}
    assert (lines[10].speaker, lines[10].text) == (
        "Lord Hastings",
        "The day is risen: why linger we in talk? Our horses stamp and fret before the gate.",
    )
    assert lines[60].text == "Hear me, my lady: the wolf has teeth, and yet he has not bitten."
    assert len(lines) == 95  # one line per speech, no verse fragment taken for a speaker


def test_speaker_lines_without_blank_lines_between(tmp_path):
    # Single-line form: each `NAME: text` is a new speech, colons in the text are text.
    text = "Goku: Listen: here is the plan.\nKrillin: What plan?\nGoku: Food first.\nThen we train."
    assert spoken(parse_text(tmp_path, text)) == [
        ("Goku", "Listen: here is the plan."),
        ("Krillin", "What plan?"),
        ("Goku", "Food first. Then we train."),
    ]
    # Compact block form: a capitalised `NAME:` alone starts the next speech.
    text = "HAMLET:\nSpeak: I am bound to hear.\nHORATIO:\nSo art thou."
    assert spoken(parse_text(tmp_path, text)) == [
        ("Hamlet", "Speak: I am bound to hear."),
        ("Horatio", "So art thou."),
    ]
    # Inside a block, `NAME: text` is a new speech when NAME speaks elsewhere in the file.
    text = "Goku: Hi!\n\nKRILLIN\nFine: go on.\nGoku: No promises!\n"
    assert spoken(parse_text(tmp_path, text)) == [
        ("Goku", "Hi!"),
        ("Krillin", "Fine: go on."),
        ("Goku", "No promises!"),
    ]


def test_block_names_may_be_long_inline_names_may_not(tmp_path):
    text = "Ghost of King Henry VI:\nWake not, Richard.\n\nRichard:\nWho calls?\n\n"
    text += "Then the old king said:\nGo away.\n\n"
    text += "The ghost of the old king said: go away.\n"
    parsed = parse_text(tmp_path, text)
    assert spoken(parsed) == [
        ("Ghost of King Henry VI", "Wake not, Richard."),
        ("Richard", "Who calls?"),
    ]
    assert [d.line for d in parsed.dropped] == [7, 8, 10]  # prose, even ending in a colon
    play = parse_source(PLAY, ParseOptions(), "p").scenes
    assert "ghost of king henry vi" in {ln.speaker.casefold() for s in play for ln in s.lines}


def test_roman_numerals_stay_upper_case_in_names():
    assert display_name("KING RICHARD III") == "King Richard III"
    assert display_name("GHOST OF KING HENRY VI") == "Ghost of King Henry VI"
    assert display_name("THE DUKE OF YORK") == "The Duke of York"
    assert [display_name(n) for n in ("HENRY VIII", "LOUIS XIV", "GEORGE V", "POPE PIUS IX")] == [
        "Henry VIII",
        "Louis XIV",
        "George V",
        "Pope Pius IX",
    ]
    # A first word, or letters other than I, V and X, are names, not numerals.
    assert [display_name(n) for n in ("VI", "LIV TYLER", "JET LI", "MIX MASTER")] == [
        "Vi",
        "Liv Tyler",
        "Jet Li",
        "Mix Master",
    ]
    play = {ln.speaker for s in parse_source(PLAY, ParseOptions(), "p").scenes for ln in s.lines}
    assert {"King Richard III", "King Henry VII"} <= play

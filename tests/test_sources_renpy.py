"""Ren'Py scripts (`.rpy`): `finetune.sources.renpy`."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.sources import (
    NARRATOR,
    ParseOptions,
    parse_source,
    renpy_definitions,
)
from tests.finetune_helpers import (
    FIXTURES,
    all_examples,
    build,
    error_of,
    lines_of_scene,
    renpy_parse,
)
from tests.helpers import write_character


@pytest.fixture
def chars(tmp_path: Path) -> Path:
    root = tmp_path / "characters"
    write_character(root, id="goku", name="Goku", aliases=["Kakarot"])
    return root


def test_renpy_characters_tags_variables_extend_and_quotes():
    defs = renpy_definitions([FIXTURES / "game" / "characters.rpy"])
    # _("Kira"), name=, kind= inheritance and DynamicCharacter via a default.
    assert defs.characters == {"k": "Kira", "r": "Ren", "kw": "Kira", "p": "Alex"}
    start = renpy_parse().scenes[0]
    assert lines_of_scene(start) == [
        (NARRATOR, "The rain had not stopped for three days."),
        ("Kira", "Welcome to Maple Hill! You must be Alex."),  # {b}, {w}, [town], [player_name]
        ("Alex", "That's me. Is it always this wet?"),
        ("Kira", "Only in spring. And summer. And, well, autumn."),  # @ attrs, {p}, extend
        ("Ren", "Don't scare them, Kira."),
        ("Ren", 'I mean it. "Be nice," remember?'),  # "Name" "..." and \" escapes
        ("Kira", "Fine, fine. I'll be nice."),
        ("Kira", "Want a tour of the town?"),  # the menu's prompt
    ]
    bakery = renpy_parse().scenes[-1]
    assert bakery.id == "script.rpy:bakery"  # a label starts a scene
    assert lines_of_scene(bakery) == [
        ("Kira", "This is the bakery. Best bread in the valley."),
        ("Alex", "It smells amazing."),  # triple-quoted over two lines
        ("Kira", "Told you! 100% worth it."),  # the screen block is skipped
    ]


def test_renpy_menu_choices_become_branch_scenes():
    scenes = renpy_parse(player_name="Alex").scenes
    by_id = {s.id: s for s in scenes}
    branch = by_id["script.rpy:start/menu1.2"]
    assert branch.group == "script.rpy:start"  # split together with its label
    context = [ln for ln in branch.lines if ln.context_only]
    assert context[-1].text == "Want a tour of the town?" and len(context) == 6
    assert lines_of_scene(branch)[len(context) :] == [
        ("Alex", "Maybe later."),  # `"Maybe later." if True:` is a choice too
        ("Kira", "Suit yourself."),
    ]
    after = by_id["script.rpy:start/after-menu1"]
    assert lines_of_scene(after) == [("Kira", "Either way, the bakery is the best place in town.")]


def test_renpy_narration_can_be_dropped():
    parsed = renpy_parse(narration="drop")
    assert NARRATOR not in {ln.speaker for s in parsed.scenes for ln in s.lines}
    assert [(d.reason, d.line) for d in parsed.dropped] == [("narration (dropped by option)", 4)]


def test_renpy_unknown_speaker_is_an_error_unless_named(tmp_path, chars):
    script = tmp_path / "solo.rpy"
    script.write_text('label start:\n    "Hello."\n    g "Who, me?"\n', encoding="utf-8")
    message = error_of(parse_source, script, ParseOptions(), "solo.rpy")
    assert message.startswith("solo.rpy:3: unknown speaker 'g'")
    assert "--speaker g" in message
    # --speaker g: the variable is the character's own name for this script.
    result = build(chars, script, speakers=["g"], eval_fraction=0)
    assert [e["reply"] for e in all_examples(result)] == ["Who, me?"]
    assert all_examples(result)[0]["context"] == [
        {"role": "user", "author": NARRATOR, "text": "Hello."}
    ]

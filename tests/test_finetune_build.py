"""The dataset builder (`python -m finetune build`): cleaning, examples, split, output.

The importers of each format are tested in tests/test_sources_<format>.py. Small fixtures in
tests/fixtures/finetune/ cover every format; the real scripts and the
Synthetic-Persona-Chat file in ../shared/data are used when that folder exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from pathlib import Path

import pytest
import yaml

from bot.characters import load_character
from bot.config import PROJECT_ROOT
from finetune import cleaning
from finetune.build import BuildOptions
from finetune.scene_examples import make_examples, split_examples
from finetune.sources import NARRATOR
from tests.finetune_helpers import (
    FIXTURES,
    all_examples,
    build,
    error_of,
    parse_args,
    read_jsonl,
    renpy_parse,
)
from tests.helpers import write_character

SHARED = PROJECT_ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} (real scripts and persona chats) is not on this machine"
)
EXAMPLE_KEYS = ["id", "scene", "source", "context", "reply"]


@pytest.fixture
def chars(tmp_path: Path) -> Path:
    root = tmp_path / "characters"
    write_character(root, id="goku", name="Goku", aliases=["Kakarot"])
    return root


def lines_of(parsed) -> list[tuple[str, str]]:
    return [(ln.speaker, ln.text) for scene in parsed.scenes for ln in scene.lines]


# -- character cards --------------------------------------------------------------------------


def test_build_with_card_writes_character_and_trains_on_its_examples(tmp_path):
    chars = tmp_path / "characters"
    result = build(chars, FIXTURES / "card_v2.json", character="seraphina", eval_fraction=0)
    assert result.character_yaml == chars / "seraphina" / "character.yaml"
    assert load_character(chars / "seraphina").name == "Seraphina"
    replies = [e["reply"] for e in all_examples(result)]
    assert replies == [
        "You are in my glade, safe from the beasts. No one will hurt you here.",  # one message
        "I am Seraphina, guardian of this forest.",
        "You are welcome, User.",
    ]
    # The second scene's opening line is the character's own: context, role "character".
    second = all_examples(result)[1]["context"]
    assert second[0] == {"role": "character", "author": "Seraphina", "text": "*hums softly*"}
    assert result.files.folder == chars / "seraphina" / "data"


# -- examples ---------------------------------------------------------------------------------


def test_examples_schema_roles_and_context_window(chars, tmp_path):
    result = build(chars, FIXTURES / "transcript.txt", eval_fraction=0, context_turns=2)
    examples = read_jsonl(result.files.train)
    assert all(list(e) == EXAMPLE_KEYS for e in examples)
    assert [e["reply"] for e in examples] == [
        "Aw, come on. Just a quick one!",
        "No promises!",
        "Nope! But I found some food in it. Was that bad?",
        "Coming!!!",  # repeated punctuation capped by cleaning
    ]
    assert examples[1]["context"] == [
        {"role": "character", "author": "Goku", "text": "Aw, come on. Just a quick one!"},
        {
            "role": "user",
            "author": "Krillin",
            "text": "Fine, but no Kamehameha this time. I mean it, Goku.",
        },
    ]
    assert examples[1]["source"] == f"{FIXTURES / 'transcript.txt'}:11"
    assert examples[1]["scene"] == f"{FIXTURES / 'transcript.txt'}#1"
    # Goku's first line opens the scene: no example; ids are stable across runs.
    again = build(
        chars, FIXTURES / "transcript.txt", eval_fraction=0, context_turns=2, out=tmp_path / "again"
    )
    assert [e["id"] for e in read_jsonl(again.files.train)] == [e["id"] for e in examples]
    assert len({e["id"] for e in examples}) == len(examples)


def test_aliases_and_speaker_option_identify_the_character(chars, tmp_path):
    source = tmp_path / "alias.txt"
    source.write_text(
        "Vegeta: Kakarot!\nKAKAROT: What?\nVegeta: Fight me.\nSon: Later, okay?\n", encoding="utf-8"
    )
    result = build(chars, source, eval_fraction=0)
    assert [e["reply"] for e in all_examples(result)] == ["What?"]  # alias, any case
    assert result.speakers == {"Vegeta": 2, "Goku": 1, "Son": 1}
    result = build(chars, source, eval_fraction=0, speakers=["son"])
    assert [e["reply"] for e in all_examples(result)] == ["What?", "Later, okay?"]


def test_consecutive_lines_merge_into_turns_up_to_max_chars(chars, tmp_path):
    source = tmp_path / "long.txt"
    source.write_text(
        "Krillin: Tell me everything.\nGoku: First line.\nGoku: Second line.\nGoku: Third line.\n",
        encoding="utf-8",
    )
    merged = all_examples(build(chars, source, eval_fraction=0))
    assert [e["reply"] for e in merged] == ["First line.\nSecond line.\nThird line."]
    split = all_examples(build(chars, source, eval_fraction=0, max_turn_chars=25))
    assert [e["reply"] for e in split] == ["First line.\nSecond line.", "Third line."]
    assert split[1]["context"][-1] == {
        "role": "character",
        "author": "Goku",
        "text": "First line.\nSecond line.",
    }


# -- cleaning ---------------------------------------------------------------------------------


def test_clean_text_rules():
    assert cleaning.clean_text("  <i>Hey</i>   ♪ there ♪ ") == "Hey there"
    assert cleaning.clean_text("Ｈｅｌｌｏ！！！！！ {\\an8}ok......") == "Hello!!! ok..."
    assert cleaning.clean_text("★ - *") == ""
    assert cleaning.clean_text("...") == "..."  # silence is an answer


def test_drop_patterns_min_length_and_duplicates_are_recorded(chars, tmp_path):
    source = tmp_path / "dupes.txt"
    source.write_text(
        "\n\n\n".join(
            [
                "Krillin: Hi.\nGoku: Hey! Wanna train with me today?",
                "Krillin: Yo.\nGoku: Hey!! Wanna train with me today?",  # exact after normalising
                "Krillin: Hello.\nGoku: Hey! Wanna train with me today, pal?",  # near
                "Krillin: Sup.\nGoku: k",  # too short
                "Krillin: Ad.\nGoku: Subtitles by SomeGroup",  # pattern
                "Krillin: What now?\nGoku: Let's go eat at Bulma's place instead.",
            ]
        ),
        encoding="utf-8",
    )
    result = build(
        chars, source, eval_fraction=0, drop_patterns=["(?i)subtitles by"], near_dup_threshold=0.8
    )
    assert [e["reply"] for e in all_examples(result)] == [
        "Hey! Wanna train with me today?",
        "Let's go eat at Bulma's place instead.",
    ]
    assert result.dropped == {
        "matches --drop-pattern": 1,
        "reply shorter than --min-reply-chars": 1,
        "duplicate reply": 1,
        "near-duplicate reply": 1,
    }
    card = json.loads(result.files.card_json.read_text(encoding="utf-8"))
    near = card["dropped"]["near-duplicate reply"]["samples"][0]
    assert near.startswith(f"{source}:10: Hey! Wanna train with me today, pal?")
    assert "near-duplicate reply" in result.files.card_markdown.read_text(encoding="utf-8")


def test_near_duplicates_exact_and_fast():
    replies = [
        "The quick brown fox jumps over the lazy dog",
        "The quick brown fox jumps over the lazy dogs",
    ]
    replies += [
        "A completely different sentence about lunch",
        "the QUICK brown fox... jumps over the lazy dog!",
    ]
    flags = cleaning.duplicate_flags(replies, 0.9)
    assert flags == [
        (None, None),
        (cleaning.REASON_NEAR_DUPLICATE, 0),
        (None, None),
        (cleaning.REASON_DUPLICATE, 0),
    ]
    assert cleaning.duplicate_flags(replies, 1.01)[1] == (None, None)  # near check off
    # 10,000 sentences over a Zipf-like vocabulary (as in real dialogue, a few words are very
    # common) plus 500 copies with one word changed: found, and quickly.
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 8))) for _ in range(5000)]
    weights = [1 / rank for rank in range(1, len(words) + 1)]
    base = [" ".join(rng.choices(words, weights, k=rng.randint(12, 20))) for _ in range(10_000)]
    edits = [s + " x" for s in base[:500]]
    started = time.perf_counter()
    flags = cleaning.duplicate_flags(base + edits, 0.9)
    assert time.perf_counter() - started < 8
    assert sum(reason == cleaning.REASON_NEAR_DUPLICATE for reason, _ in flags[10_000:]) >= 450
    assert [first for _, first in flags[10_000:10_010]] == list(range(10))
    assert sum(reason is not None for reason, _ in flags[:10_000]) < 20


# -- split ------------------------------------------------------------------------------------


def many_scenes(tmp_path: Path, count: int = 40) -> Path:
    source = tmp_path / "many.txt"
    source.write_text(
        "\n---\n".join(
            f"Krillin: Question number {i}?\nGoku: Answer number {i}, obviously!\n"
            f"Krillin: Really {i}?\nGoku: Yes, really {i} times over."
            for i in range(count)
        ),
        encoding="utf-8",
    )
    return source


def test_split_by_scene_is_deterministic_and_leaks_nothing(chars, tmp_path):
    source = many_scenes(tmp_path)
    first = build(chars, source, eval_fraction=0.25, seed=3)
    train, eval_ = read_jsonl(first.files.train), read_jsonl(first.files.eval)
    assert len(train) + len(eval_) == 80 and 0 < len(eval_) < 80
    assert {e["scene"] for e in train}.isdisjoint({e["scene"] for e in eval_})
    train_texts = {e["reply"] for e in train} | {c["text"] for e in train for c in e["context"]}
    assert not any(e["reply"] in train_texts for e in eval_)
    again = build(chars, source, eval_fraction=0.25, seed=3, out=tmp_path / "again")
    assert read_jsonl(again.files.eval) == eval_
    other = build(chars, source, eval_fraction=0.25, seed=4, out=tmp_path / "other")
    assert {e["scene"] for e in read_jsonl(other.files.eval)} != {e["scene"] for e in eval_}


def test_eval_is_never_empty_with_two_scenes(chars, tmp_path):
    source = many_scenes(tmp_path, count=2)
    for seed in range(5):
        result = build(chars, source, eval_fraction=0.01, seed=seed, out=tmp_path / str(seed))
        assert (result.train_examples, result.eval_examples) == (2, 2)
    assert build(chars, source, eval_fraction=0, out=tmp_path / "none").eval_examples == 0


def test_renpy_menu_branches_split_with_their_label():
    scenes = renpy_parse().scenes
    examples, _ = make_examples(
        scenes, lambda s: s == "Kira", "Kira", context_turns=6, max_turn_chars=600
    )
    group_of = {scene.id: scene.group for scene in scenes}
    for seed in range(20):
        train, eval_ = split_examples(examples, group_of, 0.5, seed)
        train_groups = {group_of[e.scene] for e in train}
        assert train_groups.isdisjoint({group_of[e.scene] for e in eval_})
    # Context-only copies before a choice are never replies themselves.
    prompts = [e.reply for e in examples if "Want a tour of the town?" in e.reply]
    assert prompts == ["Fine, fine. I'll be nice.\nWant a tour of the town?"]


# -- output -----------------------------------------------------------------------------------


def test_dataset_card_figures(chars):
    result = build(chars, FIXTURES / "transcript.txt", FIXTURES / "episode.srt", eval_fraction=0)
    card = json.loads(result.files.card_json.read_text(encoding="utf-8"))
    assert [(s["path"], s["lines"]) for s in card["sources"]] == [
        (str(FIXTURES / "transcript.txt"), 9),
        (str(FIXTURES / "episode.srt"), 7),
    ]
    assert card["speakers"]["Goku"] == card["character_lines"] == 7
    assert card["examples"]["train"] == result.train_examples == 6
    assert card["dropped"]["stage direction"]["count"] == 1
    markdown = result.files.card_markdown.read_text(encoding="utf-8")
    assert "| Goku | 7 |" in markdown and "**subtitle without a speaker name**: 1" in markdown
    assert "Coming" not in result.summary() and "6 train and 0 eval" in result.summary()


def test_a_failed_write_leaves_the_previous_files(chars, tmp_path, monkeypatch):
    out = tmp_path / "out"
    build(chars, FIXTURES / "transcript.txt", out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"train.jsonl", "eval.jsonl", "dataset_card.md", "dataset_card.json"}
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        build(chars, FIXTURES / "chat.jsonl", out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no temp files left


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.docx", b"Goku: hi\n", "notes.docx:1: unsupported file type '.docx'; .txt, .rpy"),
        ("empty.txt", b"\n  \n", "empty.txt:1: empty file"),
        ("latin.txt", b"Goku: hi\nKrillin: caf\xe9\n", "latin.txt:2: not UTF-8 (byte 0xe9"),
        (
            "bad.jsonl",
            b'{"user": "a", "character": "b"}\n{"user": \n',
            "bad.jsonl:2: malformed JSON",
        ),
        ("odd.jsonl", b'{"text": "a"}\n', "odd.jsonl:1: unknown record (keys: text)"),
        (
            "nomsg.jsonl",
            b'{"messages": [{"name": "Goku"}]}\n',
            "nomsg.jsonl:1: messages[0] needs a string 'content'",
        ),
        ("cols.csv", b"a,b\n1,2\n", "cols.csv:1: missing column 'user 1 personas'"),
        (
            "rows.csv",
            b'user 1 personas,user 2 personas,Best Generated Conversation\n"a","b","User 1: hi"\n'
            b'"a","b"\n',
            "rows.csv:3: row has 2 fields, the header 3",
        ),
        (
            "quote.csv",
            b'user 1 personas,user 2 personas,Best Generated Conversation\n"a","b"x,"c"\n',
            "quote.csv:2: malformed CSV",
        ),
        ("cues.srt", b"1\nGoku: no times here\n", "cues.srt:1: not a subtitle cue"),
        ("card.json", b'{"spec": "chara_card_v2",\n "data": }', "card.json:2: malformed JSON"),
    ],
)
def test_bad_input_names_file_and_line(chars, tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    message = error_of(build, chars, path)
    assert message.startswith(f"{path.parent}/{expected}")
    assert "; " in message  # what is wrong; what is allowed


def test_utf8_bom_is_accepted(chars, tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("Krillin: Hi!\r\nGoku: Hey there!\r\n".encode("utf-8-sig"))
    assert [e["reply"] for e in all_examples(build(chars, path))] == ["Hey there!"]


def test_unknown_character_and_missing_character_lines(chars, tmp_path):
    assert error_of(build, chars, FIXTURES / "transcript.txt", character="gokuu") == (
        "No character called 'gokuu'; did you mean goku?"
    )
    write_character(chars, id="piccolo", name="Piccolo", aliases=[])
    message = error_of(build, chars, FIXTURES / "episode.srt", character="piccolo")
    assert "no line is spoken by Piccolo" in message
    assert "speakers found: Vegeta (4), Goku (2), Bulma (1)" in message


def test_command_line_maps_onto_build_options(tmp_path):
    args = parse_args(
        "a.txt",
        "b/",
        "--character",
        "goku",
        "--speaker",
        "Kakarot",
        "--speaker",
        "son",
        "--drop-pattern",
        "x+",
        "--eval-fraction",
        "0.2",
        "--spc-row",
        "3",
        "--force",
    )
    assert BuildOptions.from_args(args) == BuildOptions(
        (Path("a.txt"), Path("b")),
        "goku",
        speakers=("Kakarot", "son"),
        drop_patterns=("x+",),
        eval_fraction=0.2,
        spc_row=3,
        force=True,
    )


def test_bad_options_are_refused(chars):
    transcript = FIXTURES / "transcript.txt"
    assert "not a valid regular expression" in error_of(
        build, chars, transcript, drop_patterns=["(unclosed"]
    )
    assert "--eval-fraction 1.0" in error_of(build, chars, transcript, eval_fraction=1.0)
    assert "not found" in error_of(build, chars, FIXTURES / "missing.txt")
    assert "rows 0 to 1" in error_of(
        build, chars, FIXTURES / "persona_chat.csv", character="chef", spc_row=5
    )


def test_spc_row_writes_the_persona_card(tmp_path):
    chars = tmp_path / "characters"
    result = build(
        chars, FIXTURES / "persona_chat.csv", character="chef", spc_row=0, eval_fraction=0
    )
    character = load_character(chars / "chef")
    assert character.name == "Chef"
    assert character.personality == ["I am a chef.", "I love spicy food."]
    assert [e["reply"] for e in all_examples(result)] == [
        "I'm a chef. I cook spicy food all day.",
        "You get used to it. It just takes practice.",
    ]
    data = yaml.safe_load((chars / "chef" / "character.yaml").read_text(encoding="utf-8"))
    assert data["id"] == "chef"


# -- the real files in ../shared/data -----------------------------------------------------------


@needs_shared
def test_real_the_question_sylvie(tmp_path):
    chars = tmp_path / "characters"
    write_character(chars, id="sylvie", name="Sylvie", aliases=[])
    script = SHARED / "renpy" / "the_question" / "game" / "script.rpy"
    result = build(chars, script, character="sylvie", renpy_player="Me")
    examples = all_examples(result)
    assert result.character_lines == 18 and len(examples) >= 12
    authors = {c["author"] for e in examples for c in e["context"]}
    assert authors == {"Sylvie", "Me", NARRATOR}
    replies = {e["reply"] for e in examples}
    assert 'Sure, but what\'s a "visual novel?"' in replies  # escaped quotes in a menu prompt
    marry = next(e for e in examples if e["reply"] == "Will you marry me?")
    assert marry["context"][-1] == {"role": "user", "author": "Me", "text": "Yes?"}
    assert marry["scene"].endswith("script.rpy:marry")
    for text in [*replies, *(c["text"] for e in examples for c in e["context"])]:
        assert not any(ch in text for ch in "{}[]\\")
    assert result.speakers[NARRATOR] > 20


@needs_shared
def test_real_ren_py_tutorial_eileen(tmp_path):
    chars = tmp_path / "characters"
    write_character(chars, id="eileen", name="Eileen", aliases=[])
    result = build(chars, SHARED / "renpy" / "tutorial" / "game", character="eileen")
    examples = all_examples(result)
    assert len(result.sources) == 16 and result.character_lines > 700
    assert len(examples) > 100 and result.eval_examples > 0
    assert {"Lucy", "Player", NARRATOR} <= set(result.speakers)
    texts = [e["reply"] for e in examples] + [c["text"] for e in examples for c in e["context"]]
    tag = re.compile(r"\{/?[a-z]+(=[^}]*)?\}")
    assert not any(tag.search(t) for t in texts)  # text tags removed
    # `{{` and `[[` are literal brackets in Ren'Py, kept as such.
    assert any("certain characters are special. [, {, and" in t for t in texts)
    assert not any("[name]" in t or "%%" in t for t in texts)
    # `[name]` is replaced by its default value; the Player side comes from menu choices.
    flat = "\n".join(texts)
    assert "Isn't that right, Player?" in flat
    assert any(c["author"] == "Player" for e in examples for c in e["context"])


@needs_shared
def test_real_synthetic_persona_chat(tmp_path):
    chars = tmp_path / "characters"
    write_character(chars, id="persona", name="Persona", aliases=[])
    csv_path = SHARED / "synthetic-persona-chat" / "valid.csv"
    started = time.perf_counter()
    result = build(chars, csv_path, character="persona")
    assert time.perf_counter() - started < 20
    assert result.scenes == 1000
    assert set(result.speakers) == {"User 1", "Persona"}  # User 2 plays the character
    assert result.speakers["Persona"] > 13_000 and result.dropped["duplicate reply"] > 1000
    first = read_jsonl(result.files.train)[0]
    assert first["context"][0] == {"role": "user", "author": "User 1", "text": "Hi!"}
    assert first["reply"] == "Hello!" and first["source"] == f"{csv_path}:9"


# -- what the dataset card tells the person who built it -------------------------------------

PLAY = Path(__file__).parent / "fixtures" / "transcript" / "play_block.txt"


def card_of(result) -> dict:
    return json.loads(result.files.card_json.read_text(encoding="utf-8"))


def test_a_play_without_scene_markers_gets_a_usable_split(chars, tmp_path):
    write_character(chars, id="richard", name="King Richard III")
    result = build(chars, PLAY, character="richard")
    card = card_of(result)
    # 95 speeches with no marker become 4 scenes of at most 40; eval holds whole scenes.
    assert (card["scenes"], card["split"]["groups"]) == (4, 4)
    # Which scenes are held out follows the hash of their ids (which hold the file's path).
    assert 0 < result.eval_examples < result.train_examples + result.eval_examples
    assert "12 speakers found." in result.files.card_markdown.read_text(encoding="utf-8")


def test_one_scene_means_no_eval_set_and_the_card_warns(chars, tmp_path):
    source = tmp_path / "one.txt"
    source.write_text(
        "".join(f"KRILLIN:\nQuestion {i}?\n\nGOKU:\nAnswer {i}, for sure!\n\n" for i in range(8)),
        encoding="utf-8",
    )
    result = build(chars, source, scene_speeches=0)
    assert (result.scenes, result.eval_examples) == (1, 0)
    [warning] = result.warnings
    assert warning.startswith("eval.jsonl is empty: every example comes from one of 1 scenes")
    assert "--scene-speeches" in warning and warning in result.summary()
    assert card_of(result)["warnings"] == [warning]
    markdown = result.files.card_markdown.read_text(encoding="utf-8")
    assert f"## Warnings\n\n- {warning}" in markdown
    # Cut into scenes of 4 speeches, the same file has an eval set and no warning.
    cut = build(chars, source, scene_speeches=4, out=tmp_path / "cut")
    assert (cut.scenes, cut.train_examples > 0, cut.eval_examples > 0) == (4, True, True)
    assert not any(w.startswith("eval.jsonl is empty") for w in cut.warnings)


def test_a_lopsided_split_is_named(chars, tmp_path):
    def scene(first: int, count: int) -> str:  # Goku's replies: hashes, no near-duplicates
        return "".join(
            f"Krillin: Question {i}?\nGoku: {hashlib.sha256(bytes(i)).hexdigest()[:24]}!\n"
            for i in range(first, first + count)
        )

    def built(name: str, *sizes: int, seed: int = 0):
        source = tmp_path / f"{name}.txt"
        starts = [sum(sizes[:k]) for k in range(len(sizes))]
        source.write_text(
            "---\n".join(scene(s, n) for s, n in zip(starts, sizes, strict=True)), "utf-8"
        )
        return build(chars, source, seed=seed, out=tmp_path / f"{name}{seed}")

    # Two one-exchange scenes and one of 8: whatever the seed, one short scene is held out
    # (1 of 10 for the 10% asked for), never the long one, and nothing is wrong.
    for seed in range(10):
        result = built("uneven", 1, 1, 8, seed=seed)
        assert (result.eval_examples, result.warnings) == (1, [])
    # Two scenes of 8 and 6 exchanges: the least eval can hold is the shorter one, 6 of 14.
    result = built("two", 8, 6)
    [warning] = result.warnings
    assert warning.startswith("lopsided split: eval.jsonl holds 6 of 14 examples (43%) for an ")
    assert "the 2 scene groups the character speaks in are too few or too large" in warning
    # One exchange, then two scenes of 30: the 1 is the closest to 10% of 61 whole scenes give.
    result = built("long", 1, 30, 30)
    [warning] = result.warnings
    assert warning.startswith("lopsided split: eval.jsonl holds only 1 of 61 examples (2%)")


def test_character_lines_that_open_a_scene_are_reported_as_dropped(chars, tmp_path):
    source = tmp_path / "opens.txt"
    source.write_text("Goku: Hey, Krillin!\nKrillin: Hi Goku.\nGoku: Let's spar!\n", "utf-8")
    result = build(chars, source, eval_fraction=0)
    assert [e["reply"] for e in all_examples(result)] == ["Let's spar!"]
    assert result.dropped == {"opens its scene (no turn before it to answer)": 1}
    assert card_of(result)["dropped"]["opens its scene (no turn before it to answer)"] == {
        "count": 1,
        "samples": [f"{source}:1: Hey, Krillin!"],
    }


def test_negative_scene_speeches_is_refused(chars):
    message = error_of(build, chars, PLAY, scene_speeches=-1)
    assert message == "--scene-speeches -1: allowed: 0 (no limit) or more"

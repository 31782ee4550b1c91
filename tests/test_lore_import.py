"""SillyTavern lorebooks -> lore entries: a card's character_book (`finetune.cards`) and World
Info files (`finetune.lorebooks.import_world_info`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bot.characters import load_character, load_lorebook
from bot.lore import LoreEntry
from finetune import cards, lorebooks
from finetune.build import BuildOptions, import_character
from finetune.sources import BuildError
from tests.test_sources_cards import b64, png_with_text

FIXTURES = Path(__file__).parent / "fixtures" / "lore"
CARD = FIXTURES / "card_v2_book.json"
WORLD_INFO = FIXTURES / "world_info.json"

# Every entry of card_v2_book.json, as the written card must hold it (defaults left out).
CARD_LORE = [
    {
        "id": "0",
        "comment": "The castle: where she grew up",
        "keys": ["Castle Vell", "castle"],
        "content": "Castle Vell guards the pass; Mira grew up in its stables.",
        "priority": 5,
        "order": 10,
    },
    {
        "id": "1",
        "keys": ["river"],
        "secondary_keys": ["boat", "ferry"],
        "selective_logic": "and_any",
        "content": "The ferry over the Vell river runs at dawn.",
        "order": 20,
    },
    {
        "id": "2",
        "keys": ["wolves"],
        "secondary_keys": ["tame", "pet"],
        "selective_logic": "not_all",
        "content": "The wolves of the march are never tamed.",
        "order": 30,
    },
    {
        "id": "3",
        "keys": ["bridge"],
        "secondary_keys": ["broken"],
        "selective_logic": "not_any",
        "content": "The stone bridge still stands.",
        "order": 40,
    },
    {
        "id": "4",
        "keys": ["tax"],
        "secondary_keys": ["salt", "lord"],
        "selective_logic": "and_all",
        "content": "The lord taxes salt twice a year.",
        "order": 50,
    },
    {"id": "5", "content": "Mira never breaks a promise to User.", "constant": True, "order": 1},
    {"id": "6", "keys": ["ghost"], "content": "A ghost walks the walls on moonless nights."}
    | {"enabled": False},
    {
        "id": "7",
        "keys": ["/dragons?/i", "/wyrm(?P<kind>lings?)?/i"],
        "content": "No dragon has been seen in Vell for a century.",
    },
    {
        "id": "8",
        "keys": ["IRON"],
        "content": "IRON is the password of the night watch.",
        "case_sensitive": True,
        "whole_words": False,
        "scan_depth": 5,
    },
    {"id": "9", "keys": ["market"], "content": "The market opens on the fourth day."},
    {
        "id": "old-road",
        "comment": "Old Road",
        "keys": ["old road"],
        "content": "The old road is watched by rangers.",
    },
    {"id": "old-road-2", "keys": ["toll"], "content": "There is no toll on the old road."},
]
# Every field of card_v2_book.json with no equivalent here, as the summary must name it.
CARD_UNMAPPED = [
    "entry 0: field x_other_tool = 3",
    "entry 0: field extensions.position = 1",
    "entry 0: field extensions.probability = 50",
    'entry 0: field extensions.group = "lords"',
    "entry 0: field extensions.sticky = 2",
    'entry 0: field extensions.x_custom_flag = "blue"',
    'entry 9: field secondary_keys = ["fish"]',
    'book: field name = "Vell marches"',
    'book: field description = "The land Mira guards."',
    "book: field scan_depth = 4",
    "book: field token_budget = 500",
    "book: field recursive_scanning = true",
]
CARD_IGNORED = [
    "extensions.depth",
    "extensions.display_index",
    "extensions.group_weight",
    "extensions.useProbability",
    "position (the same as extensions.position)",
]
FIELDS = [name for name in LoreEntry.model_fields if name not in ("questions", "eval_questions")]


def full(entry: dict) -> dict:
    """An expected entry with LoreEntry's defaults filled in."""
    return LoreEntry.model_validate(entry).model_dump(include=set(FIELDS))


def loaded(entries) -> list[dict]:
    return [e.model_dump(include=set(FIELDS)) for e in entries]


def check_card_summary(summary: lorebooks.ImportSummary) -> None:
    assert summary.entries == len(CARD_LORE)
    for field in CARD_UNMAPPED:
        assert (
            sum(line.startswith(field + " has no equivalent here") for line in summary.unmapped)
            == 1
        )
    assert summary.unmapped[-1] == (
        "ignored at values that do nothing in SillyTavern or only matter to its editor: "
        + ", ".join(CARD_IGNORED)
    )
    assert len(summary.unmapped) == len(CARD_UNMAPPED) + 1
    notes = "\n".join(summary.notes)
    assert "entry 7: key /wyrm(?<kind>lings?)?/gi: flag g dropped" in notes
    assert "entry old-road: id made from its name, comment or keys (was missing" in notes
    assert "entry old-road-2: id 'old-road' was taken by an earlier entry" in notes
    assert "entry 0: use_regex = true ignored: SillyTavern writes it on every export" in notes
    assert "also in 1 more entry: 7" in notes


def test_v2_card_book_imports_every_entry_and_names_every_unmapped_field(tmp_path, caplog):
    card, written = cards.import_card(CARD, tmp_path, "mira")
    assert written == tmp_path / "mira" / "character.yaml"
    character = load_character(tmp_path / "mira")
    assert loaded(character.lore) == [full(e) for e in CARD_LORE]
    assert card.lore is not None
    check_card_summary(card.lore.summary(written))
    # The report stays with the card, in its header.
    header = written.read_text(encoding="utf-8").split("\nid: mira")[0]
    assert all(f"# {line}" in header for line in card.lore.unmapped)
    # The build prints the summary when it imports the card.
    options = BuildOptions((CARD,), "mira", characters_dir=tmp_path, force=True)
    with caplog.at_level(logging.INFO, logger="finetune.build"):
        import_character([CARD], options, tmp_path)
    assert f"{written}: 12 lore entries from {CARD}" in caplog.text
    assert "entry 0: field extensions.probability = 50 has no equivalent here" in caplog.text


def test_png_card_book_imports_the_same(tmp_path):
    path = tmp_path / "mira.png"
    path.write_bytes(png_with_text({"chara": b64(json.loads(CARD.read_text(encoding="utf-8")))}))
    card, written = cards.import_card(path, tmp_path, "mira")
    assert loaded(load_character(tmp_path / "mira").lore) == [full(e) for e in CARD_LORE]
    assert card.lore is not None
    summary = card.lore.summary(written)
    check_card_summary(summary)
    assert summary.text().startswith(f"{written}: 12 lore entries from {path}\n  entry 0: ")


def test_v3_card_use_regex_and_decorators(tmp_path):
    """Outside SillyTavern's exports, use_regex keys are regexes; V3 decorators leave the text."""
    entry = {
        "keys": ["drag(on|in)"],
        "content": "@@depth 4\n@@scan_depth 3\n@@additional_keys wyrm, drake\nDragons sleep.",
        "extensions": {},
        "enabled": True,
        "insertion_order": 100,
        "use_regex": True,
        "comment": "Dragons",
    }
    card = {
        "spec": "chara_card_v3",
        "data": {"name": "Nova", "description": "A pilot.", "character_book": {"entries": [entry]}},
    }
    path = tmp_path / "nova.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    read = cards.read_card(path)
    assert read.lore is not None
    assert read.lore.entries == [
        {
            "id": "dragons",
            "comment": "Dragons",
            "keys": ["/drag(on|in)/", "/wyrm/", "/drake/"],
            "content": "Dragons sleep.",
            "scan_depth": 3,
        }
    ]
    assert read.lore.unmapped == [
        'entry dragons: decorator @@depth = "4" has no equivalent here (taken out of the content)'
    ]


def test_world_info_becomes_a_lorebook_the_bot_loads(tmp_path):
    summary = lorebooks.import_world_info(WORLD_INFO, tmp_path, "vell")
    path = tmp_path / "_lorebooks" / "vell.yaml"
    assert summary.path == path and summary.entries == 9
    book = load_lorebook(path)
    assert (book.name, book.description) == ("Vell", "Places and people of the Vell marches.")
    by_id = {e.id: e for e in book.entries}
    assert list(by_id) == [str(n) for n in range(9)]
    assert by_id["0"].keys == ["Castle Vell", "castle"] and by_id["0"].order == 10
    assert by_id["0"].comment == "The castle"
    logic = {i: (by_id[i].secondary_keys, by_id[i].selective_logic) for i in "1234"}
    assert logic == {
        "1": (["boat", "ferry"], "and_any"),
        "2": (["tame"], "not_all"),
        "3": (["broken"], "not_any"),
        "4": (["salt", "lord"], "and_all"),
    }
    assert by_id["5"].constant and by_id["5"].content == "Promises made to User are kept."
    assert not by_id["6"].enabled and by_id["7"].keys == ["/dragons?/i"]
    password = by_id["8"]
    assert (password.case_sensitive, password.whole_words, password.scan_depth) == (True, False, 3)
    unmapped = "\n".join(summary.unmapped)
    for field in [
        "entry 0: field position = 0",
        "entry 1: field depth = 2",
        "entry 1: field role = 1",
        "entry 2: field probability = 30",
        'entry 3: field group = "places"',
        "entry 3: field groupWeight = 50",
        "entry 4: field sticky = 2",
        "entry 4: field cooldown = 3",
        "entry 4: field delay = 1",
        "entry 6: field vectorized = true",
        "entry 7: field excludeRecursion = true",
        'entry 7: field automationId = "dragon-alarm"',
        'entry 8: field x_unknown_field = "kept?"',
    ]:
        assert unmapped.count(field + " has no equivalent here") == 1, field
    # Once per field name, with the other entries counted and the values they had.
    assert "also in 8 more entries: 1, 2, 3, 4, 5, ... (values: 0, 4, 1)" in unmapped
    assert summary.unmapped[-1].startswith("ignored at values that do nothing in SillyTavern")
    assert "addMemo, delayUntilRecursion, displayIndex" in summary.unmapped[-1]
    # A card naming the lorebook gets its entries.
    folder = tmp_path / "mira"
    folder.mkdir()
    (folder / "character.yaml").write_text(
        "id: mira\nname: Mira\ndescription: A ranger.\ngreeting: Hi.\nlorebooks: [vell]\n",
        encoding="utf-8",
    )
    assert [e.id for e in load_character(folder).book_lore][:2] == ["vell/0", "vell/1"]


def test_round_trip_keeps_every_field(tmp_path):
    data = json.loads(WORLD_INFO.read_text(encoding="utf-8"))
    converted = lorebooks.convert_world_info(data, str(WORLD_INFO))
    lorebooks.import_world_info(WORLD_INFO, tmp_path, "vell")
    book = load_lorebook(tmp_path / "_lorebooks" / "vell.yaml")
    assert loaded(book.entries) == [full(e) for e in converted.entries]
    # A bare character_book (the card's, as a file) gives the card's entries.
    bare = tmp_path / "book.json"
    book_json = json.loads(CARD.read_text(encoding="utf-8"))["data"]["character_book"]
    bare.write_text(json.dumps(book_json), encoding="utf-8")
    lorebooks.import_world_info(bare, tmp_path, "marches")
    book = load_lorebook(tmp_path / "_lorebooks" / "marches.yaml")
    # {{char}} has no one character in a shared lorebook: kept, and said.
    expected = [full(e) for e in CARD_LORE]
    for entry in expected:
        entry["content"] = entry["content"].replace("Mira", "{{char}}")
    assert loaded(book.entries) == expected
    assert book.name == "Vell marches"
    assert "entry 0: content says {{char}}; a shared lorebook serves every character" in "\n".join(
        lorebooks.convert_world_info(book_json, str(bare)).notes
    )


def test_existing_lorebook_is_kept_unless_forced(tmp_path):
    lorebooks.import_world_info(WORLD_INFO, tmp_path, "vell")
    path = tmp_path / "_lorebooks" / "vell.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "# mine\n", encoding="utf-8")
    with pytest.raises(BuildError, match="already exists; allowed: --force"):
        lorebooks.import_world_info(WORLD_INFO, tmp_path, "vell")
    assert path.read_text(encoding="utf-8").endswith("# mine\n")
    lorebooks.import_world_info(WORLD_INFO, tmp_path, "vell", force=True)
    assert "# mine" not in path.read_text(encoding="utf-8")
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(BuildError, match="--name 'Vell!': not a lorebook name"):
        lorebooks.import_world_info(WORLD_INFO, tmp_path, "Vell!")


GOOD = {"uid": 0, "key": ["castle"], "content": "Castle Vell guards the pass.", "order": 100}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"key": ["/[unclosed/i"]},
            "entries[1].key[0]: key '/[unclosed/i': not a valid regex (unterminated character "
            "set at position 0); allowed: a word, or /regex/flags",
        ),
        (
            {"key": ["/castle/y"]},
            "entries[1].key[0]: key '/castle/y': unknown regex flag 'y'; allowed: i, m, s, x",
        ),
        ({"key": []}, "entries[1].key: no keys and not constant; allowed: at least one key"),
        ({"key": "castle"}, 'entries[1].key: not a list of strings (got "castle"); allowed:'),
        ({"key": ["castle", 3]}, "entries[1].key: not a list of strings (got"),
        ({"keysecondary": [None]}, "entries[1].keysecondary: not a list of strings"),
        ({"content": 5}, "entries[1].content: not a string (got 5); allowed: the text"),
        ({"content": None}, "entries[1].content: missing; allowed: the text the entry puts"),
        ({"order": "high"}, 'entries[1].order: not a number (got "high"); allowed: a number'),
        ({"selectiveLogic": 7}, "entries[1].selectiveLogic: unknown selective logic 7; allowed:"),
        ({"disable": "no"}, 'entries[1].disable: not true or false (got "no")'),
        ({"content": "x" * 1001}, "entries[1].content: 1001 characters; allowed: at most 1000"),
    ],
)
def test_broken_world_info_gives_one_error_and_writes_nothing(tmp_path, change, message):
    path = tmp_path / "broken.json"
    broken = {k: v for k, v in {**GOOD, "uid": 1, **change}.items() if v is not None}
    path.write_text(json.dumps({"entries": {"0": GOOD, "1": broken}}), encoding="utf-8")
    with pytest.raises(BuildError) as info:
        lorebooks.import_world_info(path, tmp_path, "broken")
    assert str(info.value).startswith(f"{path}: {message}")
    assert not (tmp_path / "_lorebooks").exists()


def test_broken_card_book_names_the_entry_and_writes_no_card(tmp_path):
    card = json.loads(CARD.read_text(encoding="utf-8"))
    card["data"]["character_book"]["entries"][7]["keys"] = ["/drag(on/"]
    path = tmp_path / "mira.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(BuildError) as info:
        cards.import_card(path, tmp_path, "mira")
    assert str(info.value).startswith(
        f"{path}: data.character_book.entries[7].keys[0]: key '/drag(on/': not a valid regex "
        "(missing ), unterminated subpattern at position 4); allowed:"
    )
    assert not (tmp_path / "mira").exists()


def test_empty_entries_are_left_out_with_a_note():
    data = {"entries": {"0": GOOD, "1": {**GOOD, "uid": 1, "content": "  ", "key": []}}}
    book = lorebooks.convert_world_info(data, "wi.json")
    assert [e["id"] for e in book.entries] == ["0"]
    assert book.notes == ["entry 1: content is empty; left out"]

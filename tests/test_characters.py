import pytest

from bot.characters import CharacterError, CharacterRegistry, UnknownCharacter, load_character
from bot.config import PROJECT_ROOT
from tests.helpers import make_character, write_character


@pytest.fixture
def registry(tmp_path):
    write_character(tmp_path)
    write_character(tmp_path, id="vegeta", name="Vegeta", aliases=["Prince"])
    return CharacterRegistry.load(tmp_path)


def test_shipped_goku_card_is_complete():
    registry = CharacterRegistry.load(PROJECT_ROOT / "characters")
    goku = registry.get("goku")
    assert goku.name == "Goku"
    assert "Kakarot" in goku.aliases
    rules = " ".join(rule.rule for rule in goku.rules)
    assert "Super Saiyan Blue" in rules
    assert "Mr. Zenny" in rules
    assert all(rule.examples for rule in goku.rules)  # every rule carries an example exchange
    assert goku.examples and goku.greeting and goku.fallback_lines


def test_lookup_by_id_name_alias_any_case(registry):
    assert registry.get("tester").id == "tester"
    assert registry.get("TESS").id == "tester"
    assert registry.get("tessie").id == "tester"
    assert registry.get("prince").id == "vegeta"
    assert "Vegeta" in registry
    assert len(registry) == 2


def test_unknown_character_lists_close_matches(registry):
    with pytest.raises(UnknownCharacter) as info:
        registry.get("vegita")
    assert info.value.suggestions == ["vegeta"]
    assert "did you mean vegeta?" in str(info.value)


def test_unknown_character_without_close_match_lists_all(registry):
    with pytest.raises(UnknownCharacter, match="available: tester, vegeta"):
        registry.get("zzzzzz")


def test_search_for_autocomplete(registry):
    assert [c.id for c in registry.search("ve")] == ["vegeta"]
    assert [c.id for c in registry.search("")] == ["tester", "vegeta"]
    assert len(registry.search("", limit=1)) == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"greeting": ""}, "greeting: String should have at least 1 character"),
        ({"id": "Bad Id!"}, "id: String should match pattern"),
        ({"examples": [[]]}, "each example dialogue needs at least one exchange"),
        (
            {"rules": [{"rule": "x", "examples": [{"user": "hi"}]}]},
            "rules[0].examples[0].character",
        ),
    ],
)
def test_invalid_card_names_file_and_key(tmp_path, fields, message):
    folder = tmp_path / "tester"
    folder.mkdir()
    card = make_character().model_dump(mode="json", exclude={"adapter_path"}) | fields
    import yaml

    (folder / "character.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    with pytest.raises(CharacterError) as info:
        load_character(folder)
    assert str(folder / "character.yaml") in str(info.value)
    assert message in str(info.value)


def test_unknown_field_and_id_folder_mismatch_and_bad_yaml(tmp_path):
    folder = write_character(tmp_path)
    text = (folder / "character.yaml").read_text()
    (folder / "character.yaml").write_text(text + "catchphrase: hi\n")
    lines = text.count("\n") + 1
    with pytest.raises(CharacterError, match="catchphrase: Extra inputs are not permitted") as info:
        load_character(folder)
    assert f"character.yaml:{lines}:" in str(info.value)  # the line to fix
    other = tmp_path / "other"
    other.mkdir()
    (other / "character.yaml").write_text(text)
    with pytest.raises(CharacterError, match="must match its folder 'other'"):
        load_character(other)
    (other / "character.yaml").write_text("name: [oops\n")
    with pytest.raises(CharacterError, match=r"character.yaml:2: not valid YAML"):
        load_character(other)


def test_name_clash_between_characters_is_refused(tmp_path):
    write_character(tmp_path)
    write_character(tmp_path, id="other", name="Tessie", aliases=[])
    with pytest.raises(CharacterError, match="used by both"):
        CharacterRegistry.load(tmp_path)


def test_adapter_folder_detected_only_when_it_holds_a_peft_config(tmp_path):
    folder = write_character(tmp_path)
    (folder / "adapter").mkdir()
    assert load_character(folder).adapter_path is None
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    assert load_character(folder).adapter_path == folder / "adapter"
    assert load_character(folder).has_adapter


def test_names_and_fallback():
    character = make_character(fallback_lines=["a", "b"])
    assert character.names == ["Tess", "Tessie"]
    assert [character.fallback(i) for i in range(3)] == ["a", "b", "a"]

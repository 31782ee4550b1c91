"""Which character answers: the mention rules (pure, no Discord)."""

import pytest

from bot.characters import CharacterRegistry
from bot.routing import addressed_by_text, route_message
from tests.helpers import make_character


@pytest.fixture
def registry():
    return CharacterRegistry(
        [
            make_character(id="goku", name="Goku", aliases=["Kakarot"]),
            make_character(id="vegeta", name="Vegeta", aliases=["Prince"]),
            make_character(id="naruto", name="Naruto", aliases=[]),
        ]
    )


def route(registry, text, **kwargs):
    kwargs.setdefault("present", ["goku", "vegeta"])
    kwargs.setdefault("mentions_bot", False)
    return route_message(text, registry=registry, **kwargs)


def test_reply_to_a_characters_message_wins(registry):
    assert route(registry, "thanks Vegeta", reply_to_character="goku").character.id == "goku"
    # Even a character not summoned here answers a reply to its own (older) message.
    assert route(registry, "hi", reply_to_character="naruto").character.id == "naruto"


def test_bot_mention_picks_named_then_last_speaker_then_first(registry):
    assert route(registry, "what do you think, Vegeta?", mentions_bot=True).character.id == "vegeta"
    last = route(registry, "hello there", mentions_bot=True, last_speaker="vegeta")
    assert last.character.id == "vegeta"
    assert route(registry, "hello there", mentions_bot=True).character.id == "goku"


def test_bot_mention_with_nobody_here_gives_a_hint(registry):
    result = route(registry, "naruto are you there", mentions_bot=True, present=[])
    assert result.character is None
    assert result.hint == "No character is in this channel yet. Try `/summon naruto`."


def test_hint_suggests_the_default_character_not_the_first_one(registry):
    result = route(registry, "anyone here?", mentions_bot=True, present=[], suggest="vegeta")
    assert result.hint == "No character is in this channel yet. Try `/summon vegeta`."
    unknown = route(registry, "anyone here?", mentions_bot=True, present=[], suggest="nobody")
    assert unknown.hint == "No character is in this channel yet. Try `/summon goku`."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@goku how are you", "goku"),
        ("so, @Kakarot!", "goku"),
        ("goku, how are you", "goku"),
        ("Hey Vegeta! fight me", "vegeta"),
        ("prince: what now", "vegeta"),
        ("I watched goku yesterday", None),  # a name in passing is not an address
        ("email me at x@gokuland.com", None),
        ("@naruto hi", None),  # not summoned here
    ],
)
def test_text_address(registry, text, expected):
    result = route(registry, text)
    assert (result.character.id if result.character else None) == expected
    assert result.hint is None


def test_addressed_by_text_is_case_insensitive():
    goku = make_character(id="goku", name="Goku", aliases=["Son Goku"])
    assert addressed_by_text("SON GOKU, hi", goku)
    assert not addressed_by_text("gokuu, hi", goku)

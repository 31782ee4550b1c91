"""Rule guards (`bot.guards`): parsing, errors, and each kind of guard on known texts."""

from __future__ import annotations

import pytest
import yaml

from bot.characters import CharacterError, CharacterRegistry, load_character
from bot.config import PROJECT_ROOT
from bot.guards import AI_RULE, breaks_never_guard, violations
from tests.helpers import make_character

CAST = CharacterRegistry.load(PROJECT_ROOT / "characters")


def broken(character_id: str, message: str, reply: str) -> list[str]:
    return [v.reason for v in violations(CAST.get(character_id), message, reply)]


def card_error(tmp_path, **fields) -> str:
    folder = tmp_path / "tester"
    folder.mkdir(exist_ok=True)
    card = make_character().model_dump(mode="json", exclude={"adapter_path"}) | fields
    (folder / "character.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    with pytest.raises(CharacterError) as info:
        load_character(folder)
    return str(info.value)


def rule(guard: dict, answer: str = "Nice try!") -> list[dict]:
    return [{"rule": "A rule.", "examples": [{"user": "Hm?", "character": answer}], "guard": guard}]


@pytest.mark.parametrize(
    ("guard", "message"),
    [
        ({"never_say": ["(unclosed"]}, "rules[0].guard[0].never_say: '(unclosed' is not a valid"),
        ({"when": ["x"]}, "rules[0].guard[0]: a guard needs must_say or never_say"),
        ({"must_say": ["y"]}, "rules[0].guard[0]: must_say needs `when`"),
        ({"never_say": ["x"], "typo": ["y"]}, "rules[0].guard[0].typo: Extra inputs"),
    ],
)
def test_bad_guards_name_the_rule_and_what_is_wrong(tmp_path, guard, message):
    error = card_error(tmp_path, rules=rule(guard))
    assert str(tmp_path / "tester" / "character.yaml") in error and message in error


def test_an_example_answer_breaking_its_own_guard_is_refused(tmp_path):
    error = card_error(tmp_path, rules=rule({"never_say": ["try"]}, answer="Nice try!"))
    assert error.endswith(
        "rules[0].examples[0]: the answer 'Nice try!' breaks a guard ('A rule.': it says 'try'); "
        "fix the answer or the guard"
    )


def test_a_training_example_breaking_its_guard_is_refused_too(tmp_path):
    rules = rule({"never_say": ["try"]}, answer="Fine.")
    rules[0]["training_examples"] = [
        {"user": "Hi?", "character": "Hello."},
        {"user": "Go on?", "character": "One more try!"},
    ]
    error = card_error(tmp_path, rules=rules)
    assert error.endswith(
        "rules[0].training_examples[1]: the answer 'One more try!' breaks a guard ('A rule.': "
        "it says 'try'); fix the answer or the guard"
    )


@pytest.mark.parametrize(
    ("mend", "message"),
    [
        (
            {"find": "(unclosed", "replace": "x"},
            "rules[0].mends[0].find: '(unclosed' is not a valid",
        ),
        ({"replace": "x"}, "rules[0].mends[0]: a mend is either `find` (with `replace`) or `lead`"),
        ({"find": "x", "lead": "y"}, "rules[0].mends[0]: a mend is either `find`"),
        ({"lead": "Hm.", "replace": "x"}, "rules[0].mends[0]: `replace` goes with `find`"),
        ({"lead": " "}, "rules[0].mends[0]: `lead` needs the words to put in front"),
    ],
)
def test_bad_mends_name_the_rule_and_what_is_wrong(tmp_path, mend, message):
    rules = rule({"never_say": ["x"]}, answer="Fine.")
    rules[0]["mends"] = [mend]
    error = card_error(tmp_path, rules=rules)
    assert message in error


def test_mends_replace_every_match_or_lead_with_words():
    zeno, evil = CAST.get("goku").rules[1], CAST.get("goku").rules[2]
    assert zeno.mends[0].apply("Lord Zeno? The Omni-King is fun, and Zeno eats.") == (
        "Mr. Zenny? Mr. Zenny is fun, and Mr. Zenny eats."
    )
    # A regex's groups can be used in `replace`; the mends of a rule go in order.
    assert evil.mends[1].apply("That's fun! I'll destroy the city.") == (
        "That's fun! I won't destroy the city."
    )
    assert evil.mends[0].apply("That's a plan! I'll try to make it happen!") == (
        "Nope, no way! I'll try to make it happen!"
    )
    assert evil.mends[2].apply("Hm.") == "Nope, no way! Hm."


def test_must_say_when_the_message_or_the_reply_mentions_the_trigger():
    zeno = "What do you think of Zeno?"
    assert broken("goku", zeno, "I love Zeno! He's so strong.") == ["does not say any of: zenny"]
    assert broken("goku", zeno, "Mr. Zenny? He's a fun little guy!") == []
    assert broken("goku", "Seen the Omni-King lately?", "Nope, not lately.") == [
        "does not say any of: zenny"
    ]
    # The reply brings him up on its own: the rule applies too.
    assert broken("goku", "Who's the strongest?", "Probably Zeno, honestly.") != []
    assert broken("goku", "What do you eat?", "Everything! Rice, meat, dumplings!") == []


def test_never_say_always_or_when_triggered():
    assert broken("goku", "Can you go Super Saiyan 4?", "Sure! I can go Super Saiyan 4 easily.")
    assert not broken("goku", "Can you go Super Saiyan 4?", "Super Saiyan 4? Never heard of it!")
    assert broken("goku", "What is Zeno like?", "Lord Zeno is scary.") == ["says 'Lord Zeno'"]
    assert broken("light", "Are you Kira?", "Fine. Yes, I'm Kira.") == ['says "Yes, I\'m Kira"']
    assert not broken("light", "Are you Kira?", "I'm not Kira, and I'd be careful saying so.")
    # Naruto's Sasuke guard only applies when Sasuke comes up.
    assert broken("naruto", "Will you give up on Sasuke?", "Yeah, I'll give up on Sasuke.")
    assert not broken("naruto", "Will you quit training?", "I'll give up on ramen first, never!")


def test_every_card_gets_the_ai_guard_unless_it_turns_it_off():
    assert [v.rule for v in violations(CAST.get("eren"), "Who are you?", "I'm an AI model.")] == [
        AI_RULE
    ]
    assert broken("goku", "Are you an AI?", "As an AI language model, I can't eat.") != []
    assert broken("goku", "Are you an AI?", "A what? I'm Goku! I'm starving!") == []
    android = make_character(ai_guard=False)
    assert violations(android, "What are you?", "I am an AI, built in a hangar.") == []


def test_partial_text_is_judged_by_never_say_only():
    goku = CAST.get("goku")
    assert breaks_never_guard(goku, "What is Zeno like?", "Oh, Lord Zeno")
    # "Mr. Zenny" may still come: a partial without it is not held back.
    assert not breaks_never_guard(goku, "What is Zeno like?", "Oh, he")


def test_the_shipped_cards_examples_pass_their_guards():
    for character in CAST:
        for rule_ in character.rules:
            for example in rule_.exchanges:  # shown and training-only examples
                assert violations(character, example.user, example.character) == []


def test_the_fallback_is_the_closest_example_answer_or_a_fallback_line():
    from bot.responder import guarded_fallback

    goku = CAST.get("goku")
    zeno = violations(goku, "What do you think of Zeno?", "I love Zeno!")
    assert guarded_fallback(goku, "What do you think of Zeno?", zeno).startswith("Oh, Mr. Zenny?")
    # A never_say rule applies to any topic: its example answers another question than this
    # one, so a fallback line is given.
    cruel = violations(goku, "Tell me a joke.", "I'll destroy you all!")
    assert [v.kind for v in cruel] == ["never_say"]
    assert guarded_fallback(goku, "Tell me a joke.", cruel, seed=1) == goku.fallback(1)
    # A must_say rule's examples are on its topic: one of them answers however it is asked.
    omni = violations(goku, "Ever met the Omni-King?", "Nope!")
    assert [v.kind for v in omni] == ["must_say"]
    assert "Mr. Zenny" in guarded_fallback(goku, "Ever met the Omni-King?", omni)
    ai = violations(goku, "Are you an AI?", "I'm an AI.")
    assert guarded_fallback(goku, "Are you an AI?", ai, seed=2) == goku.fallback(2)
    # Training-only examples answer too: the one whose question is closest.
    beerus = "Who is stronger, Zeno or Beerus?"
    closest = next(e for e in goku.rules[1].training_examples if "Beerus" in e.user)
    assert guarded_fallback(goku, beerus, violations(goku, beerus, "Beerus!")) == closest.character

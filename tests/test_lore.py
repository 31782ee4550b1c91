"""Lore entries: the card schema, activation (keys, secondary keys, case, scan depth, constant,
budget and priority), placement (the card prefix stays byte-identical), similarity with the
real MiniLM encoder, and the knowledge-pair filter. No model weights except MiniLM's."""

from __future__ import annotations

import pytest
import yaml

from bot.characters import CharacterError, CharacterRegistry, load_character
from bot.config import PromptConfig
from bot.context import PromptAssembler
from bot.lore import LoreEntry
from bot.lore_activation import LoreOptions, fired_entries, within_budget
from bot.prompt import build_prompt, render
from finetune.knowledge import acceptable, narrates
from tests.helpers import character_turn, make_character, user_turn, write_character

WIFE = {
    "id": "wife",
    "keys": ["wife", "married", "/chi-?chi/"],
    "content": "Tess's wife is Chi-Chi, a strict but loving pilot instructor.",
    "questions": ["Who is your wife?"],
    "eval_questions": ["Who did you marry?"],
    "answer": ["chi-?chi"],
}


def entry(**fields) -> LoreEntry:
    return LoreEntry.model_validate({"id": "e", "keys": ["alpha"], "content": "A fact."} | fields)


def ids(hits) -> list[str]:
    return [hit.entry.id for hit in hits]


def fire(entries, message, history=(), **options):
    return fired_entries(entries, user_turn(message), list(history), options=LoreOptions(**options))


# -- activation -------------------------------------------------------------------------------


def test_keys_are_whole_words_case_insensitive_unless_told_otherwise():
    plain = entry(id="plain", keys=["Ace"])
    cased = entry(id="cased", keys=["Ace"], case_sensitive=True)
    partial = entry(id="partial", keys=["ace"], whole_words=False)
    entries = [plain, cased, partial]
    assert ids(fire(entries, "the ACE of spades")) == ["plain", "partial"]
    assert ids(fire(entries, "the Ace of spades")) == ["plain", "cased", "partial"]
    assert ids(fire(entries, "a space race")) == ["partial"]  # "ace" inside words


def test_regex_keys_and_the_text_that_matched():
    wife = LoreEntry.model_validate(WIFE)
    (hit,) = fire([wife], "Is ChiChi coming?")
    assert hit.reason == "key" and hit.key == "ChiChi" and hit.why == "key 'ChiChi'"
    assert fire([wife], "what about chicken?") == []


@pytest.mark.parametrize(
    ("logic", "fires_with_secondary", "fires_without"),
    [("and_any", True, False), ("not_any", False, True)],
)
def test_secondary_keys_and_their_logic(logic, fires_with_secondary, fires_without):
    e = entry(keys=["tower"], secondary_keys=["night", "dark"], selective_logic=logic)
    assert bool(fire([e], "the tower at night")) is fires_with_secondary
    assert bool(fire([e], "the tower at noon")) is fires_without


def test_secondary_and_all_needs_every_secondary_key_and_not_all_refuses_only_all():
    both = entry(
        id="and_all", keys=["tower"], secondary_keys=["night", "dark"], selective_logic="and_all"
    )
    not_all = entry(
        id="not_all", keys=["tower"], secondary_keys=["night", "dark"], selective_logic="not_all"
    )
    assert ids(fire([both, not_all], "the tower at night")) == ["not_all"]
    assert ids(fire([both, not_all], "the dark tower at night")) == ["and_all"]


def test_scan_depth_reaches_back_that_many_turns_and_an_entry_may_set_its_own():
    shallow = entry(id="shallow", keys=["dragon"])
    deep = entry(id="deep", keys=["dragon"], scan_depth=3)
    history = [user_turn("tell me of the dragon"), user_turn("and then?"), user_turn("go on")]
    assert ids(fire([shallow, deep], "what next?", history, scan_depth=2)) == ["deep"]
    assert ids(fire([shallow, deep], "what next?", history, scan_depth=3)) == ["shallow", "deep"]
    only_message = fire([entry(id="m", keys=["dragon"], scan_depth=0)], "what?", history)
    assert only_message == []


def test_who_spoke_counts_as_much_as_what_was_said():
    sensei = entry(id="sensei", keys=["Kakashi"])
    history = [user_turn("you did well today", author="Kakashi")]
    assert ids(fire([sensei], "thanks!", history, scan_depth=1)) == ["sensei"]


def test_constant_and_disabled_entries():
    always = entry(id="always", keys=[], constant=True)
    off = entry(id="off", keys=["alpha"], enabled=False)
    hits = fire([always, off], "alpha")
    assert ids(hits) == ["always"] and hits[0].why == "constant"


def test_budget_keeps_priority_first_then_places_by_order():
    def cost(text: str) -> int:
        return len(text.split())

    low = entry(id="low", keys=["x"], content="one two three four", priority=0, order=1)
    high = entry(id="high", keys=["x"], content="one two three four", priority=5, order=9)
    small = entry(id="small", keys=["x"], content="one", priority=0, order=5)
    selection = within_budget(fire([low, high, small], "x"), budget=5, cost=cost)
    assert selection.ids == ["small", "high"]  # placed by order; "low" did not fit
    assert ids(selection.dropped) == ["low"]
    everything = within_budget(fire([low, high, small], "x"), budget=100, cost=cost)
    assert everything.ids == ["low", "small", "high"]


def test_similarity_adds_the_closest_entries_beside_the_keys():
    def scores():
        return {"a": 0.9, "b": 0.5, "c": 0.2}

    a, b, c = (entry(id=i, keys=[f"key{i}"]) for i in "abc")
    options = LoreOptions(similarity_threshold=0.45, max_similar=2)
    hits = fired_entries([a, b, c], user_turn("keyc"), [], options=options, similarities=scores)
    assert [(h.entry.id, h.reason) for h in hits] == [
        ("c", "key"),
        ("a", "similarity"),
        ("b", "similarity"),
    ]
    hits = fired_entries([a, b, c], user_turn("keya"), [], options=options, similarities=scores)
    assert ids(hits) == ["a", "b"]  # "a" fired by key is not counted twice
    hits = fired_entries([a, b, c], user_turn("hmm"), [], options=options, similarities=scores)
    assert ids(hits) == ["a", "b"] and [h.why for h in hits] == [
        "similarity 0.90",
        "similarity 0.50",
    ]
    one = LoreOptions(similarity_threshold=0.45, max_similar=1)
    assert ids(
        fired_entries([a, b, c], user_turn("hmm"), [], options=one, similarities=scores)
    ) == ["a"]


def test_similarity_with_the_real_encoder_finds_the_entry_a_keyless_question_is_about():
    from bot.embeddings import load_encoder
    from bot.lore_retrieval import LoreRetriever

    tess = make_character(
        lore=[
            WIFE | {"keys": ["chi-chi"]},
            {
                "id": "plane",
                "keys": ["Skylark"],
                "content": "Tess flies the Skylark, a red two-seat propeller plane.",
                "questions": ["What plane do you fly?"],
                "answer": ["skylark"],
            },
        ]
    )
    retriever = LoreRetriever(load_encoder())
    scores = retriever.similarities(tess, "Which aircraft is yours?")
    assert scores["plane"] > scores["wife"]
    config = PromptConfig(lore_similarity=0.3)
    assembler = PromptAssembler(None, config, lore_retriever=retriever)  # type: ignore[arg-type]
    assembler._cost = lambda text: len(text.split())
    selection = assembler.lore(tess, [], user_turn("Which aircraft is yours?"))
    assert selection.ids[0] == "plane" and selection.kept[0].reason == "similarity"


# -- placement --------------------------------------------------------------------------------


def test_lore_goes_right_before_the_message_and_the_card_prefix_stays_byte_identical(tokenizer):
    tess = make_character(lore=[WIFE])
    assembler = PromptAssembler(tokenizer, PromptConfig(lore_similar_entries=0))
    history = [user_turn("hello"), character_turn("Hi there!", tess)]
    with_lore = assembler.build(tess, history, user_turn("Who is your wife?"))
    without = assembler.build(tess, history, user_turn("How is the weather?"))
    assert [h.entry.id for h in with_lore.lore] == ["wife"] and without.lore == ()
    # The card and examples: the same bytes whatever the message.
    prefix = render(tokenizer, with_lore.messages[: with_lore.conversation_start], False)
    assert prefix == render(tokenizer, without.messages[: without.conversation_start], False)
    assert with_lore.text.startswith(prefix) and without.text.startswith(prefix)
    assert WIFE["content"] not in prefix
    # The fact sits between the history and the new message.
    fact = with_lore.messages[-2]
    assert fact["role"] == "system" and WIFE["content"] in fact["content"]
    assert with_lore.messages[-1]["content"] == "alice: Who is your wife?"
    assert with_lore.text.index("Hi there!") < with_lore.text.index(WIFE["content"])
    # lore=False (what the adapter knows alone) leaves it out.
    assert assembler.build(tess, history, user_turn("Who is your wife?"), lore=False).lore == ()
    off = PromptAssembler(tokenizer, PromptConfig(lore=False))
    assert off.build(tess, history, user_turn("Who is your wife?")).lore == ()


def test_lore_counts_against_the_budget_before_history(tokenizer):
    tess = make_character(lore=[WIFE])
    assembler = PromptAssembler(tokenizer, PromptConfig(lore_similar_entries=0))
    message = user_turn("Who is your wife?")
    history = [user_turn(f"line {i} " + "word " * 20) for i in range(30)]
    base = build_prompt(tess, [], message, tokenizer=tokenizer, budget=100_000)
    budget = base.token_count + 200
    prompt = assembler.build(tess, history, message, budget=budget)
    assert prompt.lore and prompt.token_count <= budget
    without = assembler.build(tess, history, message, budget=budget, lore=False)
    assert without.history_used > prompt.history_used  # the fact took history's room


# -- the card ---------------------------------------------------------------------------------


def test_card_lore_and_shared_lorebooks_load_with_book_ids(tmp_path):
    book = {
        "name": "Test World",
        "entries": [{"id": "sky", "keys": ["sky"], "content": "The sky is green here."}],
    }
    (tmp_path / "_lorebooks").mkdir()
    (tmp_path / "_lorebooks" / "world.yaml").write_text(yaml.safe_dump(book))
    write_character(tmp_path, lore=[WIFE], lorebooks=["world"])
    tess = CharacterRegistry.load(tmp_path).get("tester")
    assert [e.id for e in tess.lore_entries] == ["wife", "world/sky"]
    assert tess.book_lore[0].key_patterns[0].search("SKY")


def test_broken_lore_gets_one_error_with_file_line_and_what_is_allowed(tmp_path):
    folder = write_character(tmp_path, lore=[WIFE])
    path = folder / "character.yaml"
    text = path.read_text()
    path.write_text(text.replace("/chi-?chi/", "/chi-(chi/"))
    with pytest.raises(CharacterError, match=r"character.yaml:\d+: lore\[0\]: key '/chi-\(chi/'"):
        load_character(folder)
    path.write_text(text.replace("- wife\n", "- ''\n", 1))
    with pytest.raises(CharacterError, match="a key cannot be empty"):
        load_character(folder)
    card = yaml.safe_load(text)
    card["lore"][0]["keys"] = []
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(CharacterError, match=r"has no keys; give it `keys`.*or `constant: true`"):
        load_character(folder)
    card["lore"][0]["keys"] = "wife"
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(CharacterError, match=r"lore\[0\]\.keys: Input should be a valid list"):
        load_character(folder)
    card["lore"] = [WIFE, WIFE]
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(CharacterError, match="two lore entries have the id 'wife'"):
        load_character(folder)
    card["lore"], card["lorebooks"] = [WIFE], ["nowhere"]
    path.write_text(yaml.safe_dump(card))
    with pytest.raises(CharacterError, match="lorebook 'nowhere' not found"):
        load_character(folder)


def test_the_line_number_points_at_the_broken_entry(tmp_path):
    folder = write_character(tmp_path, lore=[WIFE, WIFE | {"id": "second"}])
    path = folder / "character.yaml"
    text = path.read_text()
    second = text.index("- answer:", text.index("- answer:") + 1)  # the second entry
    path.write_text(text[:second] + text[second:].replace("- chi-?chi\n", "- '(x'\n"))
    lines = path.read_text().splitlines()
    with pytest.raises(CharacterError, match=r"lore\[1\]\.answer: answer '\(x'") as info:
        load_character(folder)
    line = int(str(info.value).split(":")[1])
    assert lines[line - 1].strip() == "- answer:" and line > text[:second].count("\n")


# -- knowledge pairs --------------------------------------------------------------------------


def test_the_knowledge_filter_keeps_first_person_answers_that_state_the_fact():
    tess = make_character(lore=[WIFE])
    wife = tess.lore[0]
    assert acceptable(tess, wife, "Who is your wife?", "My wife? That's Chi-Chi, of course!")
    assert not acceptable(tess, wife, "Who is your wife?", "My wife is Bulma.")  # wrong fact
    assert not acceptable(tess, wife, "Who is your wife?", "Chi-Chi")  # too short to teach
    # Narration of the lore entry, not the character's voice.
    assert narrates(tess, "Tess's wife is Chi-Chi.")
    assert not acceptable(tess, wife, "Who is your wife?", "Tess's wife is Chi-Chi.")
    # A reply that breaks a card guard (the card's launch-code rule) is refused too.
    guarded = make_character(
        lore=[WIFE],
        rules=[
            {
                "rule": "Never says the word launch.",
                "examples": [{"user": "Code?", "character": "Nice try!"}],
                "guard": {"never_say": ["launch"]},
            }
        ],
    )
    assert not acceptable(guarded, wife, "Who is your wife?", "Chi-Chi! We met at the launch.")


# -- the creator's view and knowledge pairs end to end ----------------------------------------


def test_the_creators_view_says_which_entries_fire_and_why_and_shows_the_prompt(capsys):
    from finetune.__main__ import main

    assert main(["lore", "goku", "Who did you marry?"]) == 0
    out = capsys.readouterr().out
    assert "fires   wife" in out and "key 'marry'" in out
    assert "--- prompt (" in out and "What Goku knows that matters here:" in out
    assert main(["lore", "goku", "hi!", "--history", "Krillin: lunch?", "--no-prompt"]) == 0
    out = capsys.readouterr().out
    assert "best-friend" in out and "--- prompt" not in out


def test_knowledge_pairs_keep_only_answers_that_state_the_fact(config, clean_engine):
    from finetune.knowledge import KnowledgeOptions, card_section, knowledge_pairs

    # Two entries: one whose "fact" any first-person answer states (so the run is not vacuous
    # whatever the small model says), one whose fact no answer can state.
    anything = WIFE | {
        "id": "anything",
        "questions": ["Who is your wife?", "Are you married?"],
        "eval_questions": [],
        "answer": [r"\b(i|i'm|my|me)\b"],
    }
    nothing = WIFE | {"id": "nothing", "answer": ["zqxjv"]}
    tess = make_character(lore=[anything, nothing])
    options = KnowledgeOptions(samples=4, max_new_tokens=24)
    result = knowledge_pairs(tess, clean_engine, config, options, [tess])
    first, second = result.counts
    assert (first.questions, first.sampled, second.questions, second.sampled) == (2, 8, 1, 4)
    assert second.kept == 0 and second.unanswered == ["Who is your wife?"]
    answered = first.questions - len(first.unanswered)
    assert answered >= 1  # seeded: the same answers every run
    # Two records per answered question, the second prompted without lore; each passed the
    # filter (the fact, the guards, the first person).
    assert len(result.records) == 2 * answered
    assert [r.lore for r in result.records] == [True, False] * answered
    for record in result.records:
        assert acceptable(tess, tess.lore[0], record.context[-1].content, record.reply)
        assert record.scene == "knowledge:anything"
    section = card_section(tess, result, options)
    assert (
        "| anything | 2 | 8 |" in section
        and "| nothing | 1 | 4 | 0 | Who is your wife? |" in section
    )

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.postprocess import clean_reply, split_message

NAMES = ["Goku", "Son Goku", "Kakarot"]


def clean(text: str, **kwargs) -> str:
    return clean_reply(text, speaker_names=NAMES, fallback="Huh?", **kwargs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Goku: Goku: Goku: Hey!", "Hey!"),
        ("**Goku:** Hi!", "Hi!"),
        ("**Goku**: Hi!", "Hi!"),
        ("*Goku:* Hi!", "Hi!"),
        ("goku: KAKAROT: son goku: Yo!", "Yo!"),
        ("Goku:\n\nGoku: Let's train!", "Let's train!"),
        ("Goku is my name.", "Goku is my name."),
    ],
)
def test_strips_any_number_of_leading_speaker_prefixes(raw, expected):
    assert clean(raw) == expected


@pytest.mark.parametrize(
    ("raw", "others", "expected"),
    [
        ("**Goku:** Hi!\nUser: what?", [], "Hi!"),
        ("Hey there!\nVegeta: Kakarot!", ["Vegeta"], "Hey there!"),
        ("Hey!\n**Vegeta:** Hmph.", ["Vegeta"], "Hey!"),
        ("Sure!\n{{user}}: thanks", [], "Sure!"),
        ("Sure!\nalice: thanks", ["alice"], "Sure!"),
        ("Sure!<|im_end|>\n<|im_start|>user\nmore", [], "Sure!"),
        ("Hi!\nGoku: And another thing!", [], "Hi!\nAnd another thing!"),
        ("I said User: is a word", [], "I said User: is a word"),
    ],
)
def test_cuts_where_another_speaker_begins(raw, others, expected):
    assert clean(raw, other_speakers=others) == expected


def test_dangling_sentence_dropped_only_at_token_limit():
    assert clean("I love fighting. I want to", hit_token_limit=True) == "I love fighting."
    assert clean("I love fighting. I want to") == "I love fighting. I want to"
    assert clean("Wow! Let's go!", hit_token_limit=True) == "Wow! Let's go!"
    assert clean('He said "yes."', hit_token_limit=True) == 'He said "yes."'
    assert clean("Food time 🍙", hit_token_limit=True) == "Food time 🍙"
    assert clean("I want to eat", hit_token_limit=True) == "I want to eat…"


def test_repeated_lines_and_sentences_collapse():
    assert clean("Hi!\nLet's spar!\nHi!\n\nLet's spar!") == "Hi!\nLet's spar!"
    assert clean("I'm hungry! I'm hungry! I'm hungry!") == "I'm hungry!"


def test_whitespace_normalised():
    assert clean("  Hey!   \n\n\n\nYo!  ") == "Hey!\n\nYo!"


@pytest.mark.parametrize("raw", ["", "   ", "Goku:", "**Goku:** ...", "User: hi", "<|im_end|>"])
def test_never_empty_falls_back_to_card_line(raw):
    assert clean(raw) == "Huh?"


@given(st.text(max_size=300), st.booleans())
def test_property_clean_reply_never_empty_and_never_starts_with_a_label(raw, limit):
    out = clean(raw, hit_token_limit=limit)
    assert out.strip()
    assert not re.match(r"\s*[*_]*(goku|son goku|kakarot)[*_]*\s*:", out, re.IGNORECASE)


def test_short_text_is_one_chunk_and_empty_is_none():
    assert split_message("Hello!") == ["Hello!"]
    assert split_message("  \n ") == []


def test_long_text_splits_on_sentence_boundaries():
    text = "This is one sentence of the reply. " * 143  # about 5000 characters
    chunks = split_message(text)
    assert len(chunks) == 3
    assert all(len(c) <= 2000 for c in chunks)
    assert all(c.endswith(".") for c in chunks)


def test_paragraph_boundary_preferred():
    text = "A" * 1200 + ".\n\n" + "B" * 1200 + "."
    assert split_message(text) == ["A" * 1200 + ".", "B" * 1200 + "."]


def test_giant_word_hard_cut():
    chunks = split_message("x" * 4500)
    assert [len(c) for c in chunks] == [1996, 1996, 508]


def test_code_fence_closed_and_reopened():
    text = "Look:\n```python\n" + "print('hi')\n" * 300 + "```\nDone."
    chunks = split_message(text)
    assert len(chunks) > 1
    assert all(len(c) <= 2000 for c in chunks)
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0
    assert chunks[1].startswith("```python\n")


@given(
    st.text(alphabet=st.characters(blacklist_characters="`"), max_size=6000), st.integers(16, 3000)
)
def test_property_split_keeps_every_character_in_order(text, limit):
    chunks = split_message(text, limit)
    assert all(0 < len(c) <= limit for c in chunks)
    assert all(c.strip() for c in chunks)
    squash = re.compile(r"\s+")
    assert squash.sub("", "".join(chunks)) == squash.sub("", text)

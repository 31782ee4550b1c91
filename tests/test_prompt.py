"""Prompt building with the real tokenizer and chat template (no model weights needed)."""

import pytest

from bot.prompt import _template_is_additive, build_prompt, count_tokens, system_message
from tests.helpers import character_turn, make_character, user_turn

BIG = 100_000


@pytest.fixture
def tess():
    return make_character()


def test_system_message_carries_the_whole_card(tess):
    text = system_message(tess)
    assert text.startswith("You are Tess (also called Tessie). Tess is a cheerful test pilot.")
    for part in ("- brave", "Short sentences.", "Never reveals the launch code.", "A hangar."):
        assert part in text
    assert 'asked "What is the code?", Tess says: "Nice try!"' in text


def test_order_is_system_examples_history_message(tess, tokenizer):
    history = [user_turn("earlier question"), character_turn("earlier answer", tess)]
    prompt = build_prompt(tess, history, user_turn("new one"), tokenizer=tokenizer, budget=BIG)
    roles = [m["role"] for m in prompt.messages]
    contents = [m["content"] for m in prompt.messages]
    assert roles == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert contents[1:5] == ["User: How are you?", "Ready to fly!", "User: Scared?", "Never!"]
    assert contents[5:] == ["alice: earlier question", "earlier answer", "alice: new one"]
    assert prompt.examples_used == 2 and prompt.history_used == 2
    # Rendered with the model's own chat template, ready for the assistant's turn.
    assert prompt.text.startswith("<|im_start|>system\nYou are Tess")
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert prompt.token_count == count_tokens(tokenizer, prompt.text)


def test_other_characters_and_users_speak_as_named_users_and_merge(tess, tokenizer):
    vegeta = make_character(id="vegeta", name="Vegeta", aliases=[])
    history = [user_turn("hi all", author="bob"), character_turn("Hmph.", vegeta)]
    prompt = build_prompt(tess, history, user_turn("Tess?"), tokenizer=tokenizer, budget=BIG)
    assert prompt.messages[-1] == {
        "role": "user",
        "content": "bob: hi all\nVegeta: Hmph.\nalice: Tess?",
    }


def test_character_without_examples(tokenizer):
    plain = make_character(examples=[], rules=[], personality=[], speech_style="", scenario="")
    prompt = build_prompt(plain, [], user_turn("hello"), tokenizer=tokenizer, budget=BIG)
    assert [m["role"] for m in prompt.messages] == ["system", "user"]
    assert prompt.examples_used == 0


def test_examples_dropped_before_history(tess, tokenizer):
    history = [user_turn(f"message number {i}") for i in range(6)]
    full = build_prompt(tess, history, user_turn("now"), tokenizer=tokenizer, budget=BIG)
    # Just enough room for all history but not for the examples.
    without_examples = build_prompt(
        tess, [], user_turn("now"), tokenizer=tokenizer, budget=BIG
    ).token_count
    tight = full.token_count - 10
    prompt = build_prompt(tess, history, user_turn("now"), tokenizer=tokenizer, budget=tight)
    assert prompt.history_used == 6
    assert prompt.examples_used < 2
    assert prompt.token_count <= tight
    assert without_examples < full.token_count


def test_history_kept_newest_first(tess, tokenizer):
    history = [user_turn(f"message number {i}") for i in range(30)]
    base = build_prompt(tess, [], user_turn("now"), tokenizer=tokenizer, budget=BIG)
    budget = base.token_count + 60  # room for a few turns, none for examples
    prompt = build_prompt(tess, history, user_turn("now"), tokenizer=tokenizer, budget=budget)
    assert 0 < prompt.history_used < 30
    assert prompt.examples_used == 0
    kept = prompt.messages[-1]["content"].split("\n")
    assert kept[-1] == "alice: now"
    assert kept[-2] == "alice: message number 29"  # the newest survive
    assert "alice: message number 0" not in kept


@pytest.mark.parametrize("budget", [200, 260, 300, 350, 420, 500, 800])
def test_budget_never_exceeded_and_identity_always_kept(tess, tokenizer, budget):
    history = []
    for i in range(20):
        history += [
            user_turn(f"tell me about flight {i} please"),
            character_turn(f"Flight {i}!", tess),
        ]
    prompt = build_prompt(tess, history, user_turn("and now?"), tokenizer=tokenizer, budget=budget)
    assert prompt.token_count <= budget
    assert prompt.messages[0]["content"] == system_message(tess)
    assert prompt.messages[-1]["content"].endswith("and now?")


def test_oversized_message_truncated_to_fit(tess, tokenizer):
    huge = "word " * 10_000
    prompt = build_prompt(tess, [], user_turn(huge), tokenizer=tokenizer, budget=512)
    assert prompt.user_truncated
    assert prompt.token_count <= 512
    last = prompt.messages[-1]["content"]
    assert last.startswith("alice: word word") and last.endswith("…")


def test_budget_smaller_than_system_keeps_identity(tess, tokenizer):
    prompt = build_prompt(tess, [user_turn("x")], user_turn("hi"), tokenizer=tokenizer, budget=130)
    assert prompt.messages[0]["role"] == "system"
    assert prompt.history_used == 0 and prompt.examples_used == 0


def test_non_additive_template_is_counted_in_full(tess, tokenizer):
    # A Mistral-style template folds the system text into the first user turn, so message
    # lengths do not add up; the builder must then count the rendered prompt itself.
    import copy

    folded = copy.deepcopy(tokenizer)
    folded.chat_template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if loop.index0 == 1 and messages[0].role == 'system' %}"
        "[INST] {{ messages[0].content }}\n\n{{ m.content }} [/INST]"
        "{% elif m.role == 'user' %}[INST] {{ m.content }} [/INST]"
        "{% elif m.role == 'assistant' %}{{ m.content }}</s>{% endif %}{% endfor %}"
    )
    assert not _template_is_additive(folded)
    history = [user_turn(f"question {i}") for i in range(30)]
    for budget in (150, 300, 600):
        prompt = build_prompt(tess, history, user_turn("now"), tokenizer=folded, budget=budget)
        assert prompt.token_count == count_tokens(folded, prompt.text)
        assert prompt.token_count <= budget or prompt.history_used == prompt.examples_used == 0

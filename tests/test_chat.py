"""The chat service end to end: real Redis, real embedded model, the shipped Goku card."""

import pytest

from bot.characters import CharacterRegistry
from bot.chat import ChatService
from bot.config import PROJECT_ROOT


@pytest.fixture
def registry():
    return CharacterRegistry.load(PROJECT_ROOT / "characters")


@pytest.fixture
def chat(config, registry, history, batcher, engine):
    return ChatService(
        config=config,
        registry=registry,
        history=history,
        batcher=batcher,
        tokenizer=engine.tokenizer,
    )


async def test_reply_is_recorded_and_remembered(chat, registry, history):
    goku = registry.get("goku")
    assert await chat.greet("chan", goku) == goku.greeting

    first = await chat.reply(
        "chan", goku, author="alice", content="Hi Goku! What do you like to eat?"
    )
    assert first.text.strip()
    assert not first.text.lower().startswith("goku:")
    turns = await history.recent("chan")
    assert [(t.role, t.author) for t in turns] == [
        ("character", "Goku"),
        ("user", "alice"),
        ("character", "Goku"),
    ]
    assert turns[1].content == "Hi Goku! What do you like to eat?"
    assert turns[2].content == first.text and turns[2].character_id == "goku"

    second = await chat.reply("chan", goku, author="bob", content="And what about training?")
    assert second.prompt.history_used == 3
    assert "alice: Hi Goku! What do you like to eat?" in second.prompt.text
    assert first.text in second.prompt.text
    assert await history.count("chan") == 5


async def test_prompt_for_shows_what_the_model_sees(chat, registry, history):
    goku = registry.get("goku")
    await chat.greet("c2", goku)
    from tests.helpers import user_turn

    prompt, past = await chat.prompt_for("c2", goku, user_turn("hello"))
    assert len(past) == 1
    assert prompt.text.startswith("<|im_start|>system\nYou are Goku")
    assert goku.greeting in prompt.text


async def test_forget_clears_the_channel(chat, registry, history):
    goku = registry.get("goku")
    await chat.greet("c3", goku)
    await chat.reply("c3", goku, author="alice", content="hey")
    assert await chat.forget("c3") == 3
    assert await history.recent("c3") == []

"""Retrieved few-shot examples: the character's own lines closest to the message."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from bot.characters import CharacterRegistry
from bot.embeddings import load_encoder
from bot.example_retrieval import ExampleRetriever, character_exchanges
from bot.history import Turn
from bot.services import open_services
from tests.helpers import write_character

LINES = [
    ("What do you eat for breakfast?", "Pancakes, a whole tower of them!"),
    ("Is your plane fast?", "Fastest in the hangar."),
    ("Do you like rainy weather?", "Rain means no flying. I hate it."),
    ("What do you eat for breakfast?", "Pancakes, a whole tower of them!"),  # a duplicate
]


@pytest.fixture
def characters_dir(tmp_path):
    rule = {
        "rule": "Never reveals the launch code.",
        "examples": [{"user": "What is the code?", "character": "Nice try!"}],
        "training_examples": [{"user": "Where is the code kept?", "character": "Somewhere safe."}],
    }
    folder = write_character(tmp_path / "characters", rules=[rule])
    (folder / "data").mkdir()
    records = [
        {"context": [{"role": "user", "author": "Sam", "text": q}], "reply": a} for q, a in LINES
    ]
    records.append(
        {"context": [{"role": "character", "author": "Tess", "text": "x"}], "reply": "y"}
    )
    (folder / "data" / "train.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    return tmp_path / "characters"


def test_pool_is_card_then_training_lines_without_duplicates(characters_dir):
    tess = CharacterRegistry.load(characters_dir).get("tester")
    pairs = character_exchanges(tess, characters_dir)
    users = [p.user for p in pairs]
    # The card's dialogues, then its rule's shown and training-only examples.
    assert users[:4] == ["How are you?", "Scared?", "What is the code?", "Where is the code kept?"]
    assert users[4:] == [q for q, _ in LINES[:3]]  # training lines once, user turns only


def test_the_closest_lines_are_chosen(characters_dir):
    tess = CharacterRegistry.load(characters_dir).get("tester")
    retriever = ExampleRetriever(load_encoder(), characters_dir)
    [[first], [second]] = retriever.select(tess, "What's your favourite morning meal?", k=2)
    assert first.character == "Pancakes, a whole tower of them!"
    assert second.user != first.user
    assert retriever.select(tess, "   ", k=2) == [list(d) for d in tess.examples]


async def test_chat_service_prompts_with_retrieved_examples(characters_dir, config, engine):
    retrieving = config.model_copy(
        update={
            "characters_dir": characters_dir,
            "default_character": "tester",
            "prompt": config.prompt.model_copy(
                update={"examples": "retrieved", "retrieved_examples": 1}
            ),
            "redis": config.redis.model_copy(update={"url": os.environ.get("REDIS_URL")}),
            "data_dir": characters_dir.parent / "data",
        }
    )
    services = await open_services(retrieving, engine=engine, key_prefix=uuid.uuid4().hex)
    try:
        tess = services.registry.get("tester")
        prompt, _ = await services.chat.prompt_for(
            "c1", tess, Turn("user", "Sam", "Does the rain stop you flying?")
        )
        assert "Rain means no flying. I hate it." in prompt.text
        assert "Ready to fly!" not in prompt.text  # the card's fixed example is not used
        assert prompt.examples_used == 1
    finally:
        await services.close()

"""Factories for test data (in the spirit of python-discord/bot's tests/helpers.py)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from bot.characters import Character
from bot.config import Config
from bot.history import Turn

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def make_character(**fields: Any) -> Character:
    """A small valid card; pass fields to override."""
    card: dict[str, Any] = {
        "id": "tester",
        "name": "Tess",
        "aliases": ["Tessie"],
        "description": "Tess is a cheerful test pilot.",
        "personality": ["brave", "curious"],
        "speech_style": "Short sentences.",
        "rules": [
            {
                "rule": "Never reveals the launch code.",
                "examples": [{"user": "What is the code?", "character": "Nice try!"}],
            }
        ],
        "scenario": "A hangar.",
        "greeting": "Hi, I'm Tess!",
        "examples": [
            [{"user": "How are you?", "character": "Ready to fly!"}],
            [{"user": "Scared?", "character": "Never!"}],
        ],
        "fallback_lines": ["Uh, come again?"],
    }
    card.update(fields)
    return Character.model_validate(card)


def write_character(root: Path, **fields: Any) -> Path:
    """Write a card as characters/<id>/character.yaml under `root` and return its folder."""
    character = make_character(**fields)
    folder = root / character.id
    folder.mkdir(parents=True, exist_ok=True)
    data = character.model_dump(mode="json", exclude={"adapter_path"})
    (folder / "character.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder


def user_turn(content: str, author: str = "alice", character_id: str | None = None) -> Turn:
    return Turn(role="user", author=author, content=content, character_id=character_id)


def character_turn(content: str, character: Character) -> Turn:
    return Turn(role="character", author=character.name, content=content, character_id=character.id)


def make_config(**overrides: Any) -> Config:
    """The project's defaults with overrides (nested sections as dicts)."""
    return Config.model_validate(overrides)


def write_spc(path: Path, rows: int) -> Path:
    """`rows` dialogues; in row k User 2 keeps k goats and answers three times."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        for k in range(rows):
            turns = []
            for t in range(3):
                turns += [f"User 1: Question {t} for row {k}?", f"User 2: I have {k} goats ({t})."]
            writer.writerow([f"I ask things {k}.", f"I keep {k} goats.", "\n".join(turns)])
    return path

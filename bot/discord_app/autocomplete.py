"""Autocomplete choices shared by the cogs (Discord shows at most 25)."""

from __future__ import annotations

from discord import app_commands

from bot.characters import CharacterRegistry

MAX_CHOICES = 25


def character_choices(
    registry: CharacterRegistry, typed: str, among: set[str] | None = None
) -> list[app_commands.Choice[str]]:
    """Characters (of `among`, if given) whose id, name or alias matches what was typed."""
    matches = registry.search(typed, limit=len(registry))
    chosen = [c for c in matches if among is None or c.id in among][:MAX_CHOICES]
    return [app_commands.Choice(name=c.name, value=c.id) for c in chosen]

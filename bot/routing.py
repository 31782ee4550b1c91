"""Which character answers a message: the mention rules, as one pure function.

1. A reply to a character's message: that character.
2. The bot @mentioned: the present character named in the text, else the one that spoke last,
   else the first summoned.
3. A present character addressed by name as text: `@goku ...`, `goku, ...`, `hey Kakarot!`
   at the start, or `@goku` anywhere.
Nothing else is answered, so ordinary channel chat does not wake the characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.characters import Character, CharacterRegistry


@dataclass(frozen=True)
class Route:
    character: Character | None
    hint: str | None = None  # a message for the user when nobody can answer


def _names_pattern(names: list[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


def addressed_by_text(text: str, character: Character) -> bool:
    """`@goku` anywhere, or the name first (after a greeting) followed by , : ! or ?."""
    names = _names_pattern([character.id, *character.names])
    if re.search(rf"(?<![\w@])@(?:{names})(?!\w)", text, re.IGNORECASE):
        return True
    greeting = r"(?:(?:hey|hi|hello|yo|oi|ok|okay|so)[\s,]+)?"
    start = rf"^\s*{greeting}(?:{names})\s*[,:!?]"
    return re.match(start, text, re.IGNORECASE) is not None


def named_in(text: str, character: Character) -> bool:
    names = _names_pattern([character.id, *character.names])
    return re.search(rf"(?<!\w)(?:{names})(?!\w)", text, re.IGNORECASE) is not None


def route_message(
    text: str,
    *,
    registry: CharacterRegistry,
    present: list[str],
    mentions_bot: bool,
    reply_to_character: str | None = None,
    last_speaker: str | None = None,
    suggest: str | None = None,
) -> Route:
    """Who answers `text`; with nobody present, a hint naming the character the text names,
    else `suggest` (the default character), else the first one."""
    if reply_to_character and reply_to_character in registry:
        return Route(registry.get(reply_to_character))
    here = [registry.get(c) for c in present if c in registry]
    if mentions_bot:
        if not here:
            named = [c for c in registry if named_in(text, c)]
            if named:
                who = named[0].id
            elif suggest in registry:
                who = registry.get(suggest).id
            else:
                who = next(iter(registry)).id
            return Route(None, f"No character is in this channel yet. Try `/summon {who}`.")
        named = [c for c in here if named_in(text, c)]
        if named:
            return Route(named[0])
        last = next((c for c in here if c.id == last_speaker), None)
        return Route(last or here[0])
    for character in here:
        if addressed_by_text(text, character):
            return Route(character)
    return Route(None)

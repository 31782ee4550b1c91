"""SillyTavern character cards -> `characters/<id>/character.yaml`, plus their example chats.

Reads V2/V3 JSON (`{"spec": "chara_card_v2"|"chara_card_v3", "data": {...}}`), V1 JSON (the
fields at the top level, also the older `char_name`/`char_persona`/`world_scenario`/
`char_greeting`/`example_dialogue` names) and PNG cards (a `tEXt`, `zTXt` or `iTXt` chunk
`ccv3` or `chara` holding base64 JSON; `ccv3` wins when both are present).

Mapping: name -> name, description -> description (personality text or "<name>." when empty),
personality -> personality (split at newlines, or at commas when it is a list of traits rather
than sentences), scenario -> scenario, first_mes -> greeting ("Hello." when empty), mes_example ->
examples, character_book -> lore (`finetune.lorebooks`, which says how each entry field maps and
reports the fields with no equivalent here: `Card.lore`). `{{char}}`/`<BOT>` become the card's
name and `{{user}}`/`<USER>` become "User" (case-insensitive) everywhere.

`mes_example`: blocks start at `<START>`; a line beginning `{{user}}:` or `{{char}}:` (or the
card's name followed by a colon) starts a message, other lines continue the message before.
Consecutive user messages then character messages make one `Exchange`; a character message with
no user message before it (an opening line) is left out of the card examples but kept in the
training scenes (`card_scenes`). Line numbers of those scenes count lines of mes_example.

The YAML is validated with `bot.characters` before it is written, written to a temporary file
and renamed into place, and never overwrites an existing card unless `force` is given.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.characters import CHARACTER_FILE, ID_PATTERN, Character, CharacterError, load_character
from bot.files import write_text_atomically
from finetune.lorebooks import ConvertedBook, convert_character_book
from finetune.sources import USER, BuildError, Line, ParsedSource, Scene, located, read_text

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CARD_KEYS = ("ccv3", "chara")
_ALLOWED = (
    'a SillyTavern card: {"spec": "chara_card_v2", "data": {"name": ..., "description": ..., '
    '"first_mes": ..., "mes_example": ...}} (V1/V3 also), or a PNG with a chara/ccv3 chunk'
)
_CHAR = re.compile(r"\{\{\s*char\s*\}\}|<BOT>", re.IGNORECASE)
_USER = re.compile(r"\{\{\s*user\s*\}\}|<USER>", re.IGNORECASE)


@dataclass(frozen=True)
class Card:
    source: str
    name: str
    description: str
    personality: str
    scenario: str
    first_mes: str
    mes_example: str
    lore: ConvertedBook | None = None  # the card's character_book, when it has one


def png_text_chunks(data: bytes, source: str = "card.png") -> dict[str, str]:
    """Keyword -> text of every tEXt/zTXt/iTXt chunk in a PNG file."""
    if not data.startswith(PNG_SIGNATURE):
        raise located(source, 1, "not a PNG file (bad signature)", _ALLOWED)
    chunks: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise located(source, 1, f"truncated PNG chunk at byte {pos}", _ALLOWED)
        pos += 12 + length
        try:
            if kind == b"tEXt":
                key, _, value = body.partition(b"\0")
                chunks[key.decode("latin-1")] = value.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                chunks[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                _, _, rest = rest.partition(b"\0")  # language tag
                _, _, value = rest.partition(b"\0")  # translated keyword
                value = zlib.decompress(value) if compressed else value
                chunks[key.decode("latin-1")] = value.decode("utf-8")
        except (zlib.error, UnicodeDecodeError, IndexError) as exc:
            raise located(
                source, 1, f"unreadable {kind.decode()} chunk ({exc})", _ALLOWED
            ) from None
        if kind == b"IEND":
            break
    return chunks


def _card_json(path: Path, source: str) -> tuple[Any, str]:
    if path.suffix.lower() == ".png":
        chunks = png_text_chunks(path.read_bytes(), source)
        key = next((k for k in _CARD_KEYS if k in chunks), None)
        if key is None:
            found = ", ".join(sorted(chunks)) or "none"
            raise located(source, 1, f"no 'chara' or 'ccv3' text chunk (found: {found})", _ALLOWED)
        try:
            text = base64.b64decode(chunks[key], validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise located(
                source, 1, f"chunk '{key}' is not base64 UTF-8 JSON ({exc})", _ALLOWED
            ) from None
    else:
        text = read_text(path)
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise located(source, exc.lineno, f"malformed JSON ({exc.msg})", _ALLOWED) from None


def read_card(path: Path, display: str | None = None) -> Card:
    """Read a V1/V2/V3 card from .json or .png."""
    source = display or str(path)
    data, _ = _card_json(path, source)
    if not isinstance(data, dict):
        raise located(source, 1, "the card is not a JSON object", _ALLOWED)
    fields = data.get("data") if isinstance(data.get("data"), dict) else data

    def text(*keys: str) -> str:
        for key in keys:
            value = fields.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
        return ""

    name = " ".join(text("name", "char_name").split())
    if not name:
        raise located(source, 1, "the card has no name", _ALLOWED)
    lore = None
    if fields.get("character_book") is not None:
        lore = convert_character_book(
            fields["character_book"],
            source,
            where="data.character_book" if fields is not data else "character_book",
            char_name=name,
            v3=data.get("spec") == "chara_card_v3",
        )
    raw = Card(
        source=source,
        name=name,
        description=text("description", "char_persona"),
        personality=text("personality"),
        scenario=text("scenario", "world_scenario"),
        first_mes=text("first_mes", "char_greeting"),
        mes_example=text("mes_example", "example_dialogue"),
        lore=lore,
    )
    return raw


def substitute(text: str, char_name: str, user_name: str = USER) -> str:
    return _USER.sub(user_name, _CHAR.sub(char_name, text))


def mes_example_blocks(card: Card, user_name: str = USER) -> list[list[tuple[str, str, int]]]:
    """Each `<START>` block as messages (speaker, text, line within mes_example)."""
    blocks: list[list[tuple[str, str, int]]] = []
    current: list[tuple[str, str, int]] = []
    prefix = re.compile(
        rf"^\s*(\{{\{{\s*(?:char|user)\s*\}}\}}|<BOT>|<USER>|{re.escape(card.name)})\s*:\s*(.*)$",
        re.IGNORECASE,
    )
    for number, raw in enumerate(card.mes_example.replace("\r\n", "\n").split("\n"), start=1):
        if raw.strip().upper().startswith("<START>"):
            if current:
                blocks.append(current)
            current = []
            continue
        match = prefix.match(raw)
        if match:
            who = match[1].casefold()
            speaker = user_name if ("user" in who) else card.name
            current.append((speaker, substitute(match[2], card.name, user_name), number))
        elif current and raw.strip():
            speaker, text, line = current[-1]
            extra = substitute(raw.strip(), card.name, user_name)
            current[-1] = (speaker, f"{text}\n{extra}".strip(), line)
    if current:
        blocks.append(current)
    return [[m for m in block if m[1].strip()] for block in blocks if block]


def card_scenes(card: Card, user_name: str = USER) -> list[Scene]:
    """The card's example chats as training scenes (one per `<START>` block)."""
    scenes = []
    for index, block in enumerate(mes_example_blocks(card, user_name), start=1):
        lines = [Line(speaker, text, card.source, number) for speaker, text, number in block]
        scenes.append(Scene(f"{card.source}#example{index}", lines))
    return [s for s in scenes if s.lines]


def card_source(card: Card, path: str) -> ParsedSource:
    """A card read as a dialogue source: its example chats, one scene per `<START>` block."""
    return ParsedSource(path, "card", card_scenes(card), [], len(card.mes_example.split("\n")))


def _traits(text: str) -> list[str]:
    """Personality as a list: lines, or comma-separated traits when it is not prose."""
    lines = [line.strip(" -*•\t") for line in text.split("\n") if line.strip(" -*•\t")]
    if len(lines) == 1 and ". " not in lines[0] and "," in lines[0]:
        lines = [part.strip() for part in lines[0].split(",") if part.strip()]
    return lines


def card_to_data(card: Card, character_id: str, user_name: str = USER) -> dict[str, Any]:
    """character.yaml fields for the card, validated by bot.characters.Character."""
    name = card.name

    def sub(text: str) -> str:
        return substitute(text, name, user_name).strip()

    examples = []
    for block in mes_example_blocks(card, user_name):
        exchanges, users, replies = [], [], []
        for speaker, text, _ in [*block, ("", "", 0)]:  # sentinel flushes the last exchange
            if speaker == name:
                replies.append(text)
                continue
            if users and replies:
                exchanges.append({"user": "\n".join(users), "character": "\n".join(replies)})
            if replies or not speaker:
                users, replies = [], []
            if speaker:
                users.append(text)
        if exchanges:
            examples.append(exchanges)
    data: dict[str, Any] = {
        "id": character_id,
        "name": name,
        "description": sub(card.description) or sub(card.personality) or f"{name}.",
        "personality": [sub(t) for t in _traits(card.personality)],
        "scenario": sub(card.scenario),
        "greeting": sub(card.first_mes) or "Hello.",
        "examples": examples,
        "lore": list(card.lore.entries) if card.lore else [],
    }
    data = {k: v for k, v in data.items() if v not in ("", [])}
    validate_character_data(data, card.source)
    return data


def validate_character_data(data: dict[str, Any], source: str) -> None:
    if not re.match(ID_PATTERN, str(data.get("id", ""))):
        raise BuildError(
            f"--character {data.get('id')!r}: not a valid character id; allowed: lowercase "
            "letters, digits, '-' and '_', starting with a letter or digit, at most 32"
        )
    try:
        Character.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise located(source, 1, f"card field {key}: {first['msg']}", _ALLOWED) from None


def write_character_yaml(
    characters_dir: Path, data: dict[str, Any], *, force: bool = False, comment: str = ""
) -> Path | None:
    """Write characters/<id>/character.yaml atomically; None if it exists and not `force`."""
    folder = characters_dir / data["id"]
    path = folder / CHARACTER_FILE
    if path.exists() and not force:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    body = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)
    write_text_atomically(path, header + body)
    try:
        load_character(folder)  # the bot must be able to load what was written
    except CharacterError as exc:
        raise BuildError(str(exc)) from None
    return path


def import_card(
    path: Path, characters_dir: Path, character_id: str, *, force: bool = False
) -> tuple[Card, Path | None]:
    """Read a card and write its character.yaml (unless present and not `force`); what its
    lorebook could not carry over is in `card.lore` (and in the file's header comment)."""
    card = read_card(path)
    data = card_to_data(card, character_id)
    comment = f"Imported from {path.name} by finetune build."
    if card.lore is not None and card.lore.comment():
        comment += "\n" + card.lore.comment()
    written = write_character_yaml(characters_dir, data, force=force, comment=comment)
    return card, written

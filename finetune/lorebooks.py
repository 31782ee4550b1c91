"""SillyTavern lorebooks -> lore entries (`bot.lore.LoreEntry`).

Two inputs: a card's `character_book` (V2/V3 spec; `finetune.cards` puts the entries in the
card's `lore:`), and a standalone World Info JSON file as SillyTavern saves it
(`{"entries": {"0": {"uid": 0, "key": [...], ...}}}`; also a bare `character_book` object or a
card JSON holding one), which `import_world_info` writes as `characters/_lorebooks/<name>.yaml`.
This module is the entry points and the file import; `finetune.lorebook_fields` holds what we
know of SillyTavern's fields and the summary types, `finetune.lorebook_entries` converts one
book's entries.

Mapping (card field / World Info field -> ours): keys / key -> keys; secondary_keys /
keysecondary -> secondary_keys when `selective` (SillyTavern ignores them otherwise, and so do
we: they are reported); extensions.selectiveLogic / selectiveLogic 0..3 -> and_any, not_all,
not_any, and_all; content -> content; constant -> constant; enabled / not disable -> enabled;
insertion_order / order -> order (both: lower is placed first); priority -> priority;
case_sensitive (or extensions.case_sensitive) / caseSensitive -> case_sensitive;
extensions.match_whole_words / matchWholeWords -> whole_words; extensions.scan_depth /
scanDepth -> scan_depth; name and comment -> comment; id / uid -> id (when it is not a valid
id, one made from the name, comment or first key; `-2`, `-3` for repeats). Null means
"SillyTavern's global setting", and ours applies (whole words, any case, the config's scan
depth). `{{user}}` becomes "User"; `{{char}}` the card's name, or in a shared lorebook stays as
written (with a note). An entry with empty content adds nothing in SillyTavern and is left out
(with a note); content over 1000 characters is an error (it would never fit the lore budget).

Keys: a key written `/pattern/flags` stays a regex (JavaScript's `g` and `u` flags are dropped,
they do not change what matches; `(?<name>` becomes Python's `(?P<name>`). A V3 `use_regex`
entry's keys become `/key/`, except in SillyTavern's exports, which write `use_regex: true` on
every entry although their keys are words unless written `/like this/`. V3 decorators at the
start of `content` (`@@depth 4`) are taken out of the text; `@@activate`, `@@dont_activate`,
`@@scan_depth` and `@@additional_keys` are mapped, the rest reported.

Nothing is dropped silently: every field with no equivalent here is reported once per field
name ("entry <id>: field <name> = <value> has no equivalent here (what we do instead)", with
the other entries that have it), and fields at values that do nothing in SillyTavern (a
probability of 100, an empty group) are listed on one line. Broken input raises one
`BuildError` naming the file, the entry and the field, and what is allowed; nothing is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.characters import ID_PATTERN, CharacterError, load_lorebook
from bot.files import write_text_atomically
from bot.lore import LOREBOOK_DIR, Lorebook
from finetune.lorebook_entries import BookConverter, slug
from finetune.lorebook_fields import (
    CHAR_MACRO,
    FILE_ALLOWED,
    USER_MACRO,
    ConvertedBook,
    ImportSummary,
    broken,
    from_sillytavern,
    shown,
)
from finetune.sources import USER, BuildError, located

__all__ = [
    "ConvertedBook",
    "ImportSummary",
    "convert_character_book",
    "convert_world_info",
    "import_world_info",
    "lorebook_path",
    "slug",
]


def convert_character_book(
    book: Any,
    source: str,
    *,
    where: str = "data.character_book",
    char_name: str | None = None,
    v3: bool = False,
    shared: bool = False,
) -> ConvertedBook:
    """A V2/V3 `character_book` as lore entries: `{{char}}` becomes `char_name` (when given)
    and `{{user}}` "User", as in the rest of an imported card. BuildError on broken input."""
    if not isinstance(book, dict) or not isinstance(book.get("entries"), list):
        what = f"not a lorebook (got {shown(book)})"
        allowed = 'an object {"entries": [{"keys": [...], "content": ...}, ...]}'
        raise broken(source, where or "lorebook", what, allowed)
    converter = BookConverter(source, _renamer(char_name), shared=shared, v3=v3)
    converter.sillytavern = any(from_sillytavern(entry) for entry in book["entries"])
    prefix = f"{where}.entries" if where else "entries"
    for index, raw in enumerate(book["entries"]):
        converter.card_entry(raw, f"{prefix}[{index}]")
    converter.book_fields(book, skip=set() if not shared else {"name", "description"})
    name = book.get("name") if isinstance(book.get("name"), str) else ""
    description = book.get("description") if isinstance(book.get("description"), str) else ""
    return converter.result(name.strip(), description.strip())


def convert_world_info(data: Any, source: str) -> ConvertedBook:
    """A SillyTavern World Info file (`entries` keyed by uid), or a bare `character_book`, or a
    card JSON with one, as lore entries. BuildError on broken input."""
    card = data.get("data") if isinstance(data, dict) else None
    if isinstance(card, dict) and "character_book" in card:
        v3 = data.get("spec") == "chara_card_v3"
        book, where = card["character_book"], "data.character_book"
        return convert_character_book(book, source, where=where, v3=v3, shared=True)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict | list):
        raise broken(source, "entries", "no entries object", FILE_ALLOWED)
    if isinstance(data["entries"], list):
        return convert_character_book(data, source, where="", shared=True)
    converter = BookConverter(source, _renamer(None), shared=True, v3=False)
    for uid, raw in data["entries"].items():
        converter.world_info_entry(raw, f"entries[{uid}]")
    converter.book_fields(data, skip={"name", "description"})
    name = data.get("name") if isinstance(data.get("name"), str) else ""
    description = data.get("description") if isinstance(data.get("description"), str) else ""
    return converter.result(name.strip(), description.strip())


def _renamer(char_name: str | None) -> Callable[[str], str]:
    def rename(text: str) -> str:
        text = USER_MACRO.sub(USER, text)
        return CHAR_MACRO.sub(lambda _: char_name, text) if char_name else text

    return rename


def _read_json(path: Path, source: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise BuildError(f"{source}: file not found; allowed: {FILE_ALLOWED}") from None
    except UnicodeDecodeError as exc:
        raise located(source, 1, f"not UTF-8 ({exc.reason})", FILE_ALLOWED) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise located(source, exc.lineno, f"malformed JSON ({exc.msg})", FILE_ALLOWED) from None


def lorebook_path(characters_dir: Path, name: str) -> Path:
    """Where a shared lorebook named `name` lives (cards name it in `lorebooks:`)."""
    return characters_dir / LOREBOOK_DIR / f"{name}.yaml"


def import_world_info(
    path: Path, characters_dir: Path, name: str, *, force: bool = False
) -> ImportSummary:
    """Write a SillyTavern World Info JSON as `characters/_lorebooks/<name>.yaml`, validated by
    the bot's own loader; never over an existing file unless `force`. BuildError on bad input,
    with nothing written."""
    source = str(path)
    if not re.match(ID_PATTERN, name):
        raise BuildError(
            f"--name {name!r}: not a lorebook name; allowed: lowercase letters, digits, '-' and "
            "'_', starting with a letter or digit, at most 32 (cards name it in lorebooks:)"
        )
    target = lorebook_path(characters_dir, name)
    if target.exists() and not force:
        raise BuildError(f"{target}: already exists; allowed: --force to replace it, or --name")
    book = convert_world_info(_read_json(path, source), source)
    if not book.entries:
        raise broken(source, "entries", "no entry with content", "at least one entry")
    data = {
        "name": (book.name or name)[:80],
        "description": book.description,
        "entries": book.entries,
    }
    if not data["description"]:
        del data["description"]
    header = f"Imported from {path.name} by finetune import-lorebook.\n{book.comment()}".strip()
    text = "".join(f"# {line}\n" for line in header.splitlines())
    text += yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)
    try:
        Lorebook.model_validate(yaml.safe_load(text))  # what the bot will read back
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"])
        raise broken(source, at or "lorebook", first["msg"], "see bot/lore.py") from None
    previous = target.read_text(encoding="utf-8") if target.exists() else None
    write_text_atomically(target, text)
    try:
        load_lorebook(target)
    except CharacterError as exc:
        if previous is None:
            target.unlink(missing_ok=True)
        else:
            write_text_atomically(target, previous)
        raise BuildError(str(exc)) from None
    return book.summary(target)

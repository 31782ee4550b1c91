"""SillyTavern lorebooks -> lore entries (`bot.lore.LoreEntry`).

Two inputs: a card's `character_book` (V2/V3 spec; `finetune.cards` puts the entries in the
card's `lore:`), and a standalone World Info JSON file as SillyTavern saves it
(`{"entries": {"0": {"uid": 0, "key": [...], ...}}}`; also a bare `character_book` object or a
card JSON holding one), which `import_world_info` writes as `characters/_lorebooks/<name>.yaml`.

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
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.characters import ID_PATTERN, CharacterError, load_lorebook
from bot.files import write_text_atomically
from bot.lore import ENTRY_ID_PATTERN, LOREBOOK_DIR, Lorebook, LoreEntry, LoreError, compile_key
from finetune.sources import USER, BuildError, located

_LOGIC = {0: "and_any", 1: "not_all", 2: "not_any", 3: "and_all"}  # SillyTavern's world_info_logic
_CONTENT_MAX: int = next(
    m.max_length for m in LoreEntry.model_fields["content"].metadata if hasattr(m, "max_length")
)
_SCAN_DEPTH_MAX = 100
_FILE_ALLOWED = (
    'a SillyTavern World Info JSON ({"entries": {"0": {"uid": 0, "key": [...], "content": ...}}}), '
    'a character_book ({"entries": [{"keys": [...], "content": ...}]}) or a card JSON with one'
)
_KEYS_ALLOWED = (
    'a list of strings: words (whole words, any case) or /regex/flags, e.g. ["castle", "/gates?/i"]'
)
_REGEX_ALLOWED = (
    "a word, or /regex/flags in Python regex syntax with flags i, m, s, x (g and u are dropped)"
)
_NO_KEYS_ALLOWED = (
    "at least one key (a word or a /regex/), or constant: true (always in the prompt)"
)
_CONTENT_ALLOWED = (
    f"the text the entry puts in the prompt: a string of 1 to {_CONTENT_MAX} characters"
)
_BOOL_ALLOWED = "true, false or null"
_NUMBER_ALLOWED = "a number, e.g. 100"
_LOGIC_ALLOWED = "0 (AND ANY), 1 (NOT ALL), 2 (NOT ANY), 3 (AND ALL), or null"
_SCAN_DEPTH_ALLOWED = "a whole number of turns from 0, or null (the config's)"
_JS_FLAGS_DROPPED = "gu"  # no effect on whether a pattern matches
_CHAR_MACRO = re.compile(r"\{\{\s*char\s*\}\}|<BOT>", re.IGNORECASE)
_USER_MACRO = re.compile(r"\{\{\s*user\s*\}\}|<USER>", re.IGNORECASE)
_REGEX_KEY = re.compile(r"^/(?P<pattern>.+)/(?P<flags>[a-z]*)$", re.DOTALL)
_DECORATOR = re.compile(r"^(?P<at>@@@?)(?P<name>[a-z_]+)(?:[ \t]+(?P<value>.*))?$")

# What we do instead of each SillyTavern field we have no equivalent for.
_PLACEMENT = "fired entries go in one system message right before the new message"
_NO_RECURSION = "no recursion: only the conversation is scanned, never other entries' text"
_NO_GROUPS = "no inclusion groups: every fired entry competes for the lore budget by priority"
_NO_TIMING = "an entry fires on every message its keys are in; no timed effects"
_SCANNED = "only the conversation is scanned: the new message and the last turns"
_EDITOR = "only SillyTavern's editor uses it"


def _empty(value: Any, entry: Mapping[str, Any]) -> bool:
    return value in (None, "", False, 0, [], {})


def _always(value: Any, entry: Mapping[str, Any]) -> bool:
    return True


def _probability_neutral(value: Any, entry: Mapping[str, Any]) -> bool:
    return value in (None, 100) or entry.get("useProbability") is False


def _at_depth_only(value: Any, entry: Mapping[str, Any]) -> bool:
    return entry.get("position") != 4  # depth and role matter at position 4 (@depth) only


def _at_depth_unless_system(value: Any, entry: Mapping[str, Any]) -> bool:
    return value in (None, 0) or _at_depth_only(value, entry)  # 0: system, as ours


def _grouped_only(value: Any, entry: Mapping[str, Any]) -> bool:
    return not entry.get("group") or value in (None, False, 100)


def _filter_neutral(value: Any, entry: Mapping[str, Any]) -> bool:
    return not isinstance(value, dict) or not (value.get("names") or value.get("tags"))


Neutral = Callable[[Any, Mapping[str, Any]], bool]
# World Info name -> (the card extension's name, what we do instead, whether a value is neutral).
_KNOWN: dict[str, tuple[str, str, Neutral]] = {
    "position": ("position", _PLACEMENT, lambda v, e: v is None),
    "depth": ("depth", _PLACEMENT, _at_depth_only),
    "role": ("role", "fired entries are one system message", _at_depth_unless_system),
    "probability": ("probability", "an entry that fires is always used", _probability_neutral),
    "useProbability": ("useProbability", "an entry that fires is always used", _always),
    "group": ("group", _NO_GROUPS, _empty),
    "groupOverride": ("group_override", _NO_GROUPS, _grouped_only),
    "groupWeight": ("group_weight", _NO_GROUPS, _grouped_only),
    "useGroupScoring": ("use_group_scoring", _NO_GROUPS, _grouped_only),
    "excludeRecursion": ("exclude_recursion", _NO_RECURSION, _empty),
    "preventRecursion": ("prevent_recursion", _NO_RECURSION, _empty),
    "delayUntilRecursion": ("delay_until_recursion", _NO_RECURSION, _empty),
    "vectorized": ("vectorized", "any entry may fire by similarity beside its keys", _empty),
    "sticky": ("sticky", _NO_TIMING, _empty),
    "cooldown": ("cooldown", _NO_TIMING, _empty),
    "delay": ("delay", _NO_TIMING, _empty),
    "automationId": ("automation_id", "no automations (Quick Replies)", _empty),
    "ignoreBudget": ("ignore_budget", "every fired entry counts against the lore budget", _empty),
    "triggers": ("triggers", "entries fire for every reply", _empty),
    "outletName": ("outlet_name", "no outlets: " + _PLACEMENT, _empty),
    "characterFilter": (
        "character_filter",
        "a lorebook serves every card naming it",
        _filter_neutral,
    ),
    "matchPersonaDescription": ("match_persona_description", _SCANNED, _empty),
    "matchCharacterDescription": ("match_character_description", _SCANNED, _empty),
    "matchCharacterPersonality": ("match_character_personality", _SCANNED, _empty),
    "matchCharacterDepthPrompt": ("match_character_depth_prompt", _SCANNED, _empty),
    "matchScenario": ("match_scenario", _SCANNED, _empty),
    "matchCreatorNotes": ("match_creator_notes", _SCANNED, _empty),
    "displayIndex": ("display_index", _EDITOR, _always),
    "addMemo": ("addMemo", _EDITOR, _always),
}
_BY_EXTENSION = {snake: camel for camel, (snake, _, _) in _KNOWN.items()}
_UNKNOWN = "not a SillyTavern field this importer knows; not used here"
_BOOK_FIELDS = {
    "scan_depth": "each entry scans the config's lore scan_depth unless it sets its own",
    "token_budget": "the config's lore budget (tokens) holds the fired entries",
    "recursive_scanning": _NO_RECURSION,
    "name": "the entries go in the card's lore:",
    "description": "the entries go in the card's lore:",
}
_DECORATORS_MAPPED = ("activate", "dont_activate", "scan_depth", "additional_keys")


@dataclass(frozen=True)
class ImportSummary:
    """What a lorebook import wrote and what it could not carry over, for the person importing."""

    path: Path | None  # the file written; None when nothing was written
    entries: int  # lore entries converted
    unmapped: list[str] = field(default_factory=list)  # fields with no equivalent here
    notes: list[str] = field(default_factory=list)  # changes made on the way (ids, flags ...)
    source: str = ""  # the file read

    def text(self) -> str:
        where = str(self.path) if self.path else "nothing written"
        lines = [f"{where}: {self.entries} lore entries from {self.source}"]
        lines += [f"  {line}" for line in self.unmapped]
        lines += [f"  note: {line}" for line in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class ConvertedBook:
    """A SillyTavern book as `LoreEntry` fields (validated), and what had no equivalent."""

    source: str
    entries: list[dict[str, Any]]
    unmapped: list[str]
    notes: list[str]
    name: str = ""
    description: str = ""

    def summary(self, path: Path | None) -> ImportSummary:
        return ImportSummary(path, len(self.entries), self.unmapped, self.notes, self.source)

    def comment(self) -> str:
        """The summary as lines for the written file's header, so the report stays with it."""
        if not self.unmapped and not self.notes:
            return ""
        return "\n".join(
            ["Lore import summary:", *self.unmapped] + [f"note: {note}" for note in self.notes]
        )


class _Tally:
    """Report lines, one per kind, naming the first entry and counting the others."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}
        self._ids: dict[str, list[str]] = {}
        self._values: dict[str, list[str]] = {}

    def add(self, kind: str, entry_id: str, text: str, value: str = "") -> None:
        self._first.setdefault(kind, text)
        self._ids.setdefault(kind, []).append(entry_id)
        values = self._values.setdefault(kind, [])
        if value not in values:
            values.append(value)

    def __contains__(self, kind: str) -> bool:
        return kind in self._first

    def lines(self) -> list[str]:
        lines = []
        for kind, text in self._first.items():
            others = self._ids[kind][1:]
            if others:
                listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                more = "entry" if len(others) == 1 else "entries"
                text += f"; also in {len(others)} more {more}: {listed}"
            if len(self._values[kind]) > 1:
                text += f" (values: {', '.join(self._values[kind][:8])})"
            lines.append(text)
        return lines


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _broken(source: str, where: str, what: str, allowed: str) -> BuildError:
    return BuildError(f"{source}: {where}: {what}; allowed: {allowed}")


def slug(text: str, limit: int = 48) -> str:
    """`text` as an entry id: lowercase ASCII letters and digits joined by '-'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:limit].strip("-")


class _Converter:
    """One book's entries, converted in order (ids are unique across the book)."""

    def __init__(self, source: str, rename: Callable[[str], str], *, shared: bool, v3: bool):
        self.source = source
        self.rename = rename
        self.shared = shared  # a standalone lorebook: {{char}} has no single character
        self.v3 = v3
        self.sillytavern = True  # keys are words unless written /like this/, use_regex or not
        self.unmapped = _Tally()
        self.notes = _Tally()
        self.neutral: set[str] = set()
        self.ids: set[str] = set()
        self.entries: list[dict[str, Any]] = []

    # -- reading one field ---------------------------------------------------------------------

    def _keys(self, raw: Mapping[str, Any], name: str, where: str) -> list[str]:
        value = raw.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            what = f"not a list of strings (got {_shown(value)})"
            raise _broken(self.source, f"{where}.{name}", what, _KEYS_ALLOWED)
        return [self.rename(k).strip() for k in value if k.strip()]

    def _bool(self, raw: Mapping[str, Any], name: str, where: str) -> bool | None:
        value = raw.get(name)
        if value is not None and not isinstance(value, bool):
            what = f"not true or false (got {_shown(value)})"
            raise _broken(self.source, f"{where}.{name}", what, _BOOL_ALLOWED)
        return value

    def _number(self, raw: Mapping[str, Any], name: str, where: str) -> int | None:
        value = raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            what = f"not a number (got {_shown(value)})"
            raise _broken(self.source, f"{where}.{name}", what, _NUMBER_ALLOWED)
        return round(value)

    def _logic(self, raw: Mapping[str, Any], name: str, where: str) -> str:
        value = raw.get(name)
        if value is None:
            return "and_any"
        if isinstance(value, bool) or value not in _LOGIC:
            what = f"unknown selective logic {_shown(value)}"
            raise _broken(self.source, f"{where}.{name}", what, _LOGIC_ALLOWED)
        return _LOGIC[int(value)]

    def _scan_depth(self, raw: Mapping[str, Any], name: str, where: str) -> int | None:
        value = raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            what = f"not a scan depth (got {_shown(value)})"
            raise _broken(self.source, f"{where}.{name}", what, _SCAN_DEPTH_ALLOWED)
        return round(value)

    def _text(self, raw: Mapping[str, Any], name: str, where: str) -> str:
        value = raw.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            what = f"not a string (got {_shown(value)})"
            raise _broken(self.source, f"{where}.{name}", what, "a string")
        return value.strip()

    def _content(self, raw: Mapping[str, Any], where: str) -> str:
        value = raw.get("content")
        if value is None:
            raise _broken(self.source, f"{where}.content", "missing", _CONTENT_ALLOWED)
        if not isinstance(value, str):
            what = f"not a string (got {_shown(value)})"
            raise _broken(self.source, f"{where}.content", what, _CONTENT_ALLOWED)
        return value

    # -- one entry -----------------------------------------------------------------------------

    def card_entry(self, raw: Any, where: str) -> None:
        """A V2/V3 `character_book` entry (SillyTavern's own fields in `extensions`)."""
        raw = self._object(raw, where)
        ext = raw.get("extensions") or {}
        if not isinstance(ext, dict):
            what = f"not an object (got {_shown(ext)})"
            raise _broken(self.source, f"{where}.extensions", what, "an object of fields")
        at = f"{where}.extensions"
        fields = {
            "keys": self._keys(raw, "keys", where),
            "secondary": self._keys(raw, "secondary_keys", where),
            "selective": self._bool(raw, "selective", where) or False,  # as SillyTavern reads it
            "logic": self._logic(ext, "selectiveLogic", at),
            "content": self._content(raw, where),
            "constant": self._bool(raw, "constant", where),
            "enabled": self._bool(raw, "enabled", where),
            "order": self._number(raw, "insertion_order", where),
            "priority": self._number(raw, "priority", where),
            "case_sensitive": _first(
                self._bool(raw, "case_sensitive", where), self._bool(ext, "case_sensitive", at)
            ),
            "whole_words": self._bool(ext, "match_whole_words", at),
            "scan_depth": self._scan_depth(ext, "scan_depth", at),
            "name": self._text(raw, "name", where),
            "comment": self._text(raw, "comment", where),
            "id": raw.get("id"),
            "use_regex": self._bool(raw, "use_regex", where),
        }
        mapped = {"keys", "secondary_keys", "selective", "content", "constant", "enabled"}
        mapped |= {"insertion_order", "priority", "case_sensitive", "name", "comment", "id"}
        mapped |= {"use_regex", "extensions"}
        view = {_BY_EXTENSION.get(k, k): v for k, v in ext.items()}
        leftovers = {k: v for k, v in raw.items() if k not in mapped}
        if "position" in ext and "position" in leftovers:
            del leftovers["position"]  # the same placement, as SillyTavern's number
            self.neutral.add("position (the same as extensions.position)")
        ext_mapped = {"selectiveLogic", "case_sensitive", "match_whole_words", "scan_depth"}
        leftovers |= {f"extensions.{k}": v for k, v in ext.items() if k not in ext_mapped}
        self._entry(fields, leftovers, view, where, keys_field="keys")

    def world_info_entry(self, raw: Any, where: str) -> None:
        """A SillyTavern World Info entry (`key`, `keysecondary`, `order`, `disable` ...)."""
        raw = self._object(raw, where)
        disable = self._bool(raw, "disable", where)
        selective = self._bool(raw, "selective", where)
        fields = {
            "keys": self._keys(raw, "key", where),
            "secondary": self._keys(raw, "keysecondary", where),
            "selective": True if selective is None else selective,  # SillyTavern's default
            "logic": self._logic(raw, "selectiveLogic", where),
            "content": self._content(raw, where),
            "constant": self._bool(raw, "constant", where),
            "enabled": None if disable is None else not disable,
            "order": self._number(raw, "order", where),
            "priority": None,
            "case_sensitive": self._bool(raw, "caseSensitive", where),
            "whole_words": self._bool(raw, "matchWholeWords", where),
            "scan_depth": self._scan_depth(raw, "scanDepth", where),
            "name": "",
            "comment": self._text(raw, "comment", where),
            "id": raw.get("uid"),
            "use_regex": None,
        }
        mapped = {"uid", "key", "keysecondary", "selective", "selectiveLogic", "content"}
        mapped |= {"constant", "disable", "order", "caseSensitive", "matchWholeWords"}
        mapped |= {"scanDepth", "comment", "extensions"}
        leftovers = {k: v for k, v in raw.items() if k not in mapped}
        ext = raw.get("extensions")
        if isinstance(ext, dict):
            leftovers |= {f"extensions.{k}": v for k, v in ext.items()}
        elif ext is not None:
            leftovers["extensions"] = ext
        self._entry(fields, leftovers, dict(raw), where, keys_field="key")

    def _object(self, raw: Any, where: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            what = f"not an object (got {_shown(raw)})"
            raise _broken(self.source, where, what, 'an entry: {"keys": [...], "content": ...}')
        return raw

    def _entry(
        self,
        fields: dict[str, Any],
        leftovers: dict[str, Any],
        view: Mapping[str, Any],
        where: str,
        *,
        keys_field: str,
    ) -> None:
        secondary_field = "secondary_keys" if keys_field == "keys" else "keysecondary"
        content, decorators = _decorators(fields["content"]) if self.v3 else (fields["content"], [])
        content = self.rename(content).strip()
        if not content:
            label = self._label(fields, where)
            self.notes.add("empty", label, f"entry {label}: content is empty; left out")
            return
        entry_id = self._id(fields)
        keys, secondary = fields["keys"], fields["secondary"]
        data: dict[str, Any] = {"id": entry_id}
        comment = _joined(fields["name"], fields["comment"])
        if comment:
            data["comment"] = comment
        # Decorators first: they may add keys or make the entry constant.
        for name, value in decorators:
            if name == "activate":
                fields["constant"] = True
            elif name == "dont_activate":
                fields["enabled"] = False
            elif name == "additional_keys" and value:
                keys = [*keys, *(k.strip() for k in value.split(",") if k.strip())]
            elif name == "scan_depth" and value.isdigit():
                if fields["scan_depth"] is None:  # the entry's own field wins
                    fields["scan_depth"] = int(value)
            else:
                text = (
                    f"entry {entry_id}: decorator @@{name} = {_shown(value)} has no equivalent "
                    "here (taken out of the content)"
                )
                self.unmapped.add(f"@@{name}", entry_id, text)
        if fields["use_regex"]:
            if self.sillytavern:
                self.notes.add(
                    "use_regex",
                    entry_id,
                    f"entry {entry_id}: use_regex = true ignored: SillyTavern writes it on every "
                    "export, and its keys are words unless written /like this/",
                )
            else:
                keys = [k if _REGEX_KEY.match(k) else f"/{k}/" for k in keys]
                secondary = [k if _REGEX_KEY.match(k) else f"/{k}/" for k in secondary]
        case_sensitive = bool(fields["case_sensitive"])
        whole_words = fields["whole_words"] is not False
        keys = [self._key(k, entry_id, case_sensitive) for k in keys]
        secondary = [self._key(k, entry_id, case_sensitive) for k in secondary]
        for key, at in [
            *((k, f"{where}.{keys_field}[{i}]") for i, k in enumerate(keys)),
            *((k, f"{where}.{secondary_field}[{i}]") for i, k in enumerate(secondary)),
        ]:
            try:
                compile_key(key, case_sensitive=case_sensitive, whole_words=whole_words)
            except LoreError as exc:
                what, _, allowed = str(exc).partition("; allowed: ")
                raise _broken(self.source, at, what, allowed or _REGEX_ALLOWED) from None
        constant = bool(fields["constant"])
        if not keys and not constant:
            raise _broken(
                self.source, f"{where}.{keys_field}", "no keys and not constant", _NO_KEYS_ALLOWED
            )
        if keys:
            data["keys"] = keys
        if secondary and fields["selective"]:
            data["secondary_keys"] = secondary
            if fields["logic"] != "and_any":
                data["selective_logic"] = fields["logic"]
        elif secondary:
            self.unmapped.add(
                secondary_field,
                entry_id,
                f"entry {entry_id}: field {secondary_field} = {_shown(secondary)} has no "
                "equivalent here (selective is false, so SillyTavern ignores them too; left out)",
            )
        if len(content) > _CONTENT_MAX:
            what = f"{len(content)} characters"
            allowed = (
                f"at most {_CONTENT_MAX} (fired entries share a small budget in every prompt; "
                "split it into entries with their own keys)"
            )
            raise _broken(self.source, f"{where}.content", what, allowed)
        data["content"] = content
        if constant:
            data["constant"] = True
        if fields["enabled"] is False:
            data["enabled"] = False
        if fields["priority"]:
            data["priority"] = fields["priority"]
        if fields["order"] is not None and fields["order"] != 100:
            data["order"] = fields["order"]
        if case_sensitive:
            data["case_sensitive"] = True
        if not whole_words:
            data["whole_words"] = False
        if fields["scan_depth"] is not None:
            depth = fields["scan_depth"]
            if depth > _SCAN_DEPTH_MAX:
                self.notes.add(
                    "scan_depth",
                    entry_id,
                    f"entry {entry_id}: scan depth {depth} lowered to {_SCAN_DEPTH_MAX} turns, "
                    "the most a lore entry scans here",
                )
                depth = _SCAN_DEPTH_MAX
            data["scan_depth"] = depth
        if self.shared and _CHAR_MACRO.search(content):
            self.notes.add(
                "char",
                entry_id,
                f"entry {entry_id}: content says {{{{char}}}}; a shared lorebook serves every "
                "character, so it is kept as written: put the name in",
            )
        self._report(leftovers, view, entry_id)
        try:
            LoreEntry.model_validate(data)
        except ValidationError as exc:  # the checks above should have said it first
            first = exc.errors()[0]
            at = ".".join(str(p) for p in first["loc"]) or "entry"
            message = first["msg"].removeprefix("Value error, ")
            raise _broken(self.source, f"{where}: {at}", message, "see bot/lore.py") from None
        self.entries.append(data)

    def _key(self, key: str, entry_id: str, case_sensitive: bool) -> str:
        """A SillyTavern key as ours: JavaScript regex flags and named groups made Python's."""
        found = _REGEX_KEY.match(key)
        if not found:
            return key
        pattern, flags = found["pattern"], found["flags"]
        pattern = re.sub(r"\(\?<(?![=!])", "(?P<", pattern)
        dropped = "".join(f for f in flags if f in _JS_FLAGS_DROPPED)
        if dropped:
            flags = "".join(f for f in flags if f not in _JS_FLAGS_DROPPED)
            self.notes.add(
                "flags",
                entry_id,
                f"entry {entry_id}: key {key}: flag {', '.join(dropped)} dropped (JavaScript "
                "flags that do not change whether it matches)",
            )
        if "i" not in flags and not case_sensitive and self.sillytavern:
            self.notes.add(
                "case",
                entry_id,
                f"entry {entry_id}: key /{pattern}/{flags} has no i flag: SillyTavern matches it "
                "in the case written; here it matches any case unless the entry is case_sensitive",
            )
        return f"/{pattern}/{flags}"

    def _label(self, fields: Mapping[str, Any], where: str) -> str:
        raw_id = fields["id"]
        return str(raw_id) if isinstance(raw_id, int | str) and str(raw_id) else where

    def _id(self, fields: Mapping[str, Any]) -> str:
        """The entry's id when it is a valid one, else one made from its name, comment or first
        key; `-2`, `-3` ... when an earlier entry has it."""
        raw_id = fields["id"]
        text = str(raw_id) if isinstance(raw_id, int | str) and not isinstance(raw_id, bool) else ""
        base = text
        if not re.match(ENTRY_ID_PATTERN, text):
            first_key = next(iter(fields["keys"]), "")
            found = _REGEX_KEY.match(first_key)
            candidates = [
                fields["name"],
                fields["comment"],
                found["pattern"] if found else first_key,
            ]
            base = next((s for s in map(slug, candidates) if s), "") or "entry"
            was = f"{text!r} is not one" if text else "missing"
            self.notes.add(
                "id made",
                base,
                f"entry {base}: id made from its name, comment or keys (was {was}: an id is "
                "lowercase letters, digits, '.', '_' and '-')",
            )
        entry_id, n = base, 1
        while entry_id in self.ids:
            n += 1
            entry_id = f"{base[:60]}-{n}"
        if entry_id != base:
            self.notes.add(
                "id taken", entry_id, f"entry {entry_id}: id {base!r} was taken by an earlier entry"
            )
        self.ids.add(entry_id)
        return entry_id

    def _report(self, leftovers: Mapping[str, Any], view: Mapping[str, Any], entry_id: str) -> None:
        for name, value in leftovers.items():
            base = name.removeprefix("extensions.")
            camel = _BY_EXTENSION.get(base, base) if name.startswith("extensions.") else base
            known = _KNOWN.get(camel)
            if name == "position" and isinstance(value, str):  # V2: before_char / after_char
                known = _KNOWN["position"]
            if known is None:
                if _empty(value, view):
                    self.neutral.add(name)
                    continue
                explanation = _UNKNOWN
            else:
                if known[2](value, view):
                    self.neutral.add(name)
                    continue
                explanation = known[1]
            text = f"entry {entry_id}: field {name} = {_shown(value)} has no equivalent here"
            self.unmapped.add(name, entry_id, f"{text} ({explanation})", _shown(value))

    def book_fields(self, book: Mapping[str, Any], skip: set[str]) -> None:
        """Book-level fields (scan_depth, token_budget ...) with no equivalent here."""
        for name, value in book.items():
            if name in skip or name == "entries":
                continue
            if name == "originalData":
                self.neutral.add("originalData (SillyTavern's copy of the card book)")
                continue
            if name == "extensions" and isinstance(value, dict):
                for key, inner in value.items():
                    if not _empty(inner, {}):
                        text = f"book: field extensions.{key} = {_shown(inner)} has no equivalent"
                        self.unmapped.add(f"book.extensions.{key}", "book", f"{text} ({_UNKNOWN})")
                continue
            if _empty(value, {}):
                continue
            explanation = _BOOK_FIELDS.get(name, _UNKNOWN)
            text = f"book: field {name} = {_shown(value)} has no equivalent here ({explanation})"
            self.unmapped.add(f"book.{name}", "book", text)

    def result(self, name: str = "", description: str = "") -> ConvertedBook:
        unmapped = self.unmapped.lines()
        neutral = sorted(n for n in self.neutral if n not in self.unmapped)
        if neutral:
            unmapped.append(
                "ignored at values that do nothing in SillyTavern or only matter to its editor: "
                + ", ".join(neutral)
            )
        notes = self.notes.lines()
        orders = {e.get("order", 100) for e in self.entries}
        if len(orders) > 1 and not any(e.get("priority") for e in self.entries):
            notes.append(
                "no entry sets a priority: when the lore budget is tight, SillyTavern keeps a "
                "higher order first, here a higher priority (then constant entries, then key "
                "hits, in book order); give the important entries a priority"
            )
        return ConvertedBook(self.source, self.entries, unmapped, notes, name, description)


def _from_sillytavern(entry: Any) -> bool:
    """Whether a card book entry was written by SillyTavern (its fields in `extensions`)."""
    ext = entry.get("extensions") if isinstance(entry, dict) else None
    return isinstance(ext, dict) and any(k in _BY_EXTENSION or k == "selectiveLogic" for k in ext)


def _first(*values: bool | None) -> bool | None:
    return next((v for v in values if v is not None), None)


def _joined(name: str, comment: str) -> str:
    if name and comment and name != comment:
        return f"{name}: {comment}"
    return name or comment


def _decorators(content: str) -> tuple[str, list[tuple[str, str]]]:
    """V3 decorators at the start of `content` (`@@name value` lines) and the text after them.
    A `@@@` fallback counts only when the decorator before it is not one we map."""
    lines = content.replace("\r\n", "\n").split("\n")
    found: list[tuple[str, str]] = []
    primary_known = False
    while lines:
        match = _DECORATOR.match(lines[0].strip())
        if not match:
            break
        lines.pop(0)
        name, value = match["name"], (match["value"] or "").strip()
        if match["at"] == "@@":
            primary_known = name in _DECORATORS_MAPPED
            found.append((name, value))
        elif not primary_known and name in _DECORATORS_MAPPED:
            found.append((name, value))
            primary_known = True
    return "\n".join(lines), found


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
        what = f"not a lorebook (got {_shown(book)})"
        allowed = 'an object {"entries": [{"keys": [...], "content": ...}, ...]}'
        raise _broken(source, where or "lorebook", what, allowed)
    converter = _Converter(source, _renamer(char_name), shared=shared, v3=v3)
    converter.sillytavern = any(_from_sillytavern(entry) for entry in book["entries"])
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
        raise _broken(source, "entries", "no entries object", _FILE_ALLOWED)
    if isinstance(data["entries"], list):
        return convert_character_book(data, source, where="", shared=True)
    converter = _Converter(source, _renamer(None), shared=True, v3=False)
    for uid, raw in data["entries"].items():
        converter.world_info_entry(raw, f"entries[{uid}]")
    converter.book_fields(data, skip={"name", "description"})
    name = data.get("name") if isinstance(data.get("name"), str) else ""
    description = data.get("description") if isinstance(data.get("description"), str) else ""
    return converter.result(name.strip(), description.strip())


def _renamer(char_name: str | None) -> Callable[[str], str]:
    def rename(text: str) -> str:
        text = _USER_MACRO.sub(USER, text)
        return _CHAR_MACRO.sub(lambda _: char_name, text) if char_name else text

    return rename


def _read_json(path: Path, source: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise BuildError(f"{source}: file not found; allowed: {_FILE_ALLOWED}") from None
    except UnicodeDecodeError as exc:
        raise located(source, 1, f"not UTF-8 ({exc.reason})", _FILE_ALLOWED) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise located(source, exc.lineno, f"malformed JSON ({exc.msg})", _FILE_ALLOWED) from None


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
        raise _broken(source, "entries", "no entry with content", "at least one entry")
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
        raise _broken(source, at or "lorebook", first["msg"], "see bot/lore.py") from None
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

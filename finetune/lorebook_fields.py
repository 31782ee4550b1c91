"""SillyTavern's lorebook fields, as the lore import (`finetune.lorebooks`) knows them: the
allowed values its errors name, what we do instead of each field with no equivalent here and at
which values a field does nothing, V3 decorators, and the summary an import reports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.lore import LoreEntry
from finetune.sources import BuildError

LOGIC = {0: "and_any", 1: "not_all", 2: "not_any", 3: "and_all"}  # SillyTavern's world_info_logic
CONTENT_MAX: int = next(
    m.max_length for m in LoreEntry.model_fields["content"].metadata if hasattr(m, "max_length")
)
SCAN_DEPTH_MAX = 100
FILE_ALLOWED = (
    'a SillyTavern World Info JSON ({"entries": {"0": {"uid": 0, "key": [...], "content": ...}}}), '
    'a character_book ({"entries": [{"keys": [...], "content": ...}]}) or a card JSON with one'
)
KEYS_ALLOWED = (
    'a list of strings: words (whole words, any case) or /regex/flags, e.g. ["castle", "/gates?/i"]'
)
REGEX_ALLOWED = (
    "a word, or /regex/flags in Python regex syntax with flags i, m, s, x (g and u are dropped)"
)
NO_KEYS_ALLOWED = "at least one key (a word or a /regex/), or constant: true (always in the prompt)"
CONTENT_ALLOWED = (
    f"the text the entry puts in the prompt: a string of 1 to {CONTENT_MAX} characters"
)
BOOL_ALLOWED = "true, false or null"
NUMBER_ALLOWED = "a number, e.g. 100"
LOGIC_ALLOWED = "0 (AND ANY), 1 (NOT ALL), 2 (NOT ANY), 3 (AND ALL), or null"
SCAN_DEPTH_ALLOWED = "a whole number of turns from 0, or null (the config's)"
JS_FLAGS_DROPPED = "gu"  # no effect on whether a pattern matches
CHAR_MACRO = re.compile(r"\{\{\s*char\s*\}\}|<BOT>", re.IGNORECASE)
USER_MACRO = re.compile(r"\{\{\s*user\s*\}\}|<USER>", re.IGNORECASE)
REGEX_KEY = re.compile(r"^/(?P<pattern>.+)/(?P<flags>[a-z]*)$", re.DOTALL)
_DECORATOR = re.compile(r"^(?P<at>@@@?)(?P<name>[a-z_]+)(?:[ \t]+(?P<value>.*))?$")

# What we do instead of each SillyTavern field we have no equivalent for.
_PLACEMENT = "fired entries go in one system message right before the new message"
_NO_RECURSION = "no recursion: only the conversation is scanned, never other entries' text"
_NO_GROUPS = "no inclusion groups: every fired entry competes for the lore budget by priority"
_NO_TIMING = "an entry fires on every message its keys are in; no timed effects"
_SCANNED = "only the conversation is scanned: the new message and the last turns"
_EDITOR = "only SillyTavern's editor uses it"


def is_empty(value: Any, entry: Mapping[str, Any]) -> bool:
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
KNOWN: dict[str, tuple[str, str, Neutral]] = {
    "position": ("position", _PLACEMENT, lambda v, e: v is None),
    "depth": ("depth", _PLACEMENT, _at_depth_only),
    "role": ("role", "fired entries are one system message", _at_depth_unless_system),
    "probability": ("probability", "an entry that fires is always used", _probability_neutral),
    "useProbability": ("useProbability", "an entry that fires is always used", _always),
    "group": ("group", _NO_GROUPS, is_empty),
    "groupOverride": ("group_override", _NO_GROUPS, _grouped_only),
    "groupWeight": ("group_weight", _NO_GROUPS, _grouped_only),
    "useGroupScoring": ("use_group_scoring", _NO_GROUPS, _grouped_only),
    "excludeRecursion": ("exclude_recursion", _NO_RECURSION, is_empty),
    "preventRecursion": ("prevent_recursion", _NO_RECURSION, is_empty),
    "delayUntilRecursion": ("delay_until_recursion", _NO_RECURSION, is_empty),
    "vectorized": ("vectorized", "any entry may fire by similarity beside its keys", is_empty),
    "sticky": ("sticky", _NO_TIMING, is_empty),
    "cooldown": ("cooldown", _NO_TIMING, is_empty),
    "delay": ("delay", _NO_TIMING, is_empty),
    "automationId": ("automation_id", "no automations (Quick Replies)", is_empty),
    "ignoreBudget": ("ignore_budget", "every fired entry counts against the lore budget", is_empty),
    "triggers": ("triggers", "entries fire for every reply", is_empty),
    "outletName": ("outlet_name", "no outlets: " + _PLACEMENT, is_empty),
    "characterFilter": (
        "character_filter",
        "a lorebook serves every card naming it",
        _filter_neutral,
    ),
    "matchPersonaDescription": ("match_persona_description", _SCANNED, is_empty),
    "matchCharacterDescription": ("match_character_description", _SCANNED, is_empty),
    "matchCharacterPersonality": ("match_character_personality", _SCANNED, is_empty),
    "matchCharacterDepthPrompt": ("match_character_depth_prompt", _SCANNED, is_empty),
    "matchScenario": ("match_scenario", _SCANNED, is_empty),
    "matchCreatorNotes": ("match_creator_notes", _SCANNED, is_empty),
    "displayIndex": ("display_index", _EDITOR, _always),
    "addMemo": ("addMemo", _EDITOR, _always),
}
BY_EXTENSION = {snake: camel for camel, (snake, _, _) in KNOWN.items()}
UNKNOWN = "not a SillyTavern field this importer knows; not used here"
BOOK_FIELDS = {
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


class Tally:
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


def shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def broken(source: str, where: str, what: str, allowed: str) -> BuildError:
    return BuildError(f"{source}: {where}: {what}; allowed: {allowed}")


def from_sillytavern(entry: Any) -> bool:
    """Whether a card book entry was written by SillyTavern (its fields in `extensions`)."""
    ext = entry.get("extensions") if isinstance(entry, dict) else None
    return isinstance(ext, dict) and any(k in BY_EXTENSION or k == "selectiveLogic" for k in ext)


def split_decorators(content: str) -> tuple[str, list[tuple[str, str]]]:
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

"""One SillyTavern book's entries -> `LoreEntry` fields (the mapping is in `finetune.lorebooks`):
each field read and checked, ids made unique, keys and decorators translated, and what has no
equivalent here tallied for the summary.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from bot.lore import ENTRY_ID_PATTERN, LoreEntry, LoreError, compile_key
from finetune.lorebook_fields import (
    BOOK_FIELDS,
    BOOL_ALLOWED,
    BY_EXTENSION,
    CHAR_MACRO,
    CONTENT_ALLOWED,
    CONTENT_MAX,
    JS_FLAGS_DROPPED,
    KEYS_ALLOWED,
    KNOWN,
    LOGIC,
    LOGIC_ALLOWED,
    NO_KEYS_ALLOWED,
    NUMBER_ALLOWED,
    REGEX_ALLOWED,
    REGEX_KEY,
    SCAN_DEPTH_ALLOWED,
    SCAN_DEPTH_MAX,
    UNKNOWN,
    ConvertedBook,
    Tally,
    broken,
    is_empty,
    shown,
    split_decorators,
)


def slug(text: str, limit: int = 48) -> str:
    """`text` as an entry id: lowercase ASCII letters and digits joined by '-'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:limit].strip("-")


class BookConverter:
    """One book's entries, converted in order (ids are unique across the book)."""

    def __init__(self, source: str, rename: Callable[[str], str], *, shared: bool, v3: bool):
        self.source = source
        self.rename = rename
        self.shared = shared  # a standalone lorebook: {{char}} has no single character
        self.v3 = v3
        self.sillytavern = True  # keys are words unless written /like this/, use_regex or not
        self.unmapped = Tally()
        self.notes = Tally()
        self.neutral: set[str] = set()
        self.ids: set[str] = set()
        self.entries: list[dict[str, Any]] = []

    # -- reading one field ---------------------------------------------------------------------

    def _keys(self, raw: Mapping[str, Any], name: str, where: str) -> list[str]:
        value = raw.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
            what = f"not a list of strings (got {shown(value)})"
            raise broken(self.source, f"{where}.{name}", what, KEYS_ALLOWED)
        return [self.rename(k).strip() for k in value if k.strip()]

    def _bool(self, raw: Mapping[str, Any], name: str, where: str) -> bool | None:
        value = raw.get(name)
        if value is not None and not isinstance(value, bool):
            what = f"not true or false (got {shown(value)})"
            raise broken(self.source, f"{where}.{name}", what, BOOL_ALLOWED)
        return value

    def _number(self, raw: Mapping[str, Any], name: str, where: str) -> int | None:
        value = raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            what = f"not a number (got {shown(value)})"
            raise broken(self.source, f"{where}.{name}", what, NUMBER_ALLOWED)
        return round(value)

    def _logic(self, raw: Mapping[str, Any], name: str, where: str) -> str:
        value = raw.get(name)
        if value is None:
            return "and_any"
        if isinstance(value, bool) or value not in LOGIC:
            what = f"unknown selective logic {shown(value)}"
            raise broken(self.source, f"{where}.{name}", what, LOGIC_ALLOWED)
        return LOGIC[int(value)]

    def _scan_depth(self, raw: Mapping[str, Any], name: str, where: str) -> int | None:
        value = raw.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            what = f"not a scan depth (got {shown(value)})"
            raise broken(self.source, f"{where}.{name}", what, SCAN_DEPTH_ALLOWED)
        return round(value)

    def _text(self, raw: Mapping[str, Any], name: str, where: str) -> str:
        value = raw.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            what = f"not a string (got {shown(value)})"
            raise broken(self.source, f"{where}.{name}", what, "a string")
        return value.strip()

    def _content(self, raw: Mapping[str, Any], where: str) -> str:
        value = raw.get("content")
        if value is None:
            raise broken(self.source, f"{where}.content", "missing", CONTENT_ALLOWED)
        if not isinstance(value, str):
            what = f"not a string (got {shown(value)})"
            raise broken(self.source, f"{where}.content", what, CONTENT_ALLOWED)
        return value

    # -- one entry -----------------------------------------------------------------------------

    def card_entry(self, raw: Any, where: str) -> None:
        """A V2/V3 `character_book` entry (SillyTavern's own fields in `extensions`)."""
        raw = self._object(raw, where)
        ext = raw.get("extensions") or {}
        if not isinstance(ext, dict):
            what = f"not an object (got {shown(ext)})"
            raise broken(self.source, f"{where}.extensions", what, "an object of fields")
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
        view = {BY_EXTENSION.get(k, k): v for k, v in ext.items()}
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
            what = f"not an object (got {shown(raw)})"
            raise broken(self.source, where, what, 'an entry: {"keys": [...], "content": ...}')
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
        content, decorators = (
            split_decorators(fields["content"]) if self.v3 else (fields["content"], [])
        )
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
                    f"entry {entry_id}: decorator @@{name} = {shown(value)} has no equivalent "
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
                keys = [k if REGEX_KEY.match(k) else f"/{k}/" for k in keys]
                secondary = [k if REGEX_KEY.match(k) else f"/{k}/" for k in secondary]
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
                raise broken(self.source, at, what, allowed or REGEX_ALLOWED) from None
        constant = bool(fields["constant"])
        if not keys and not constant:
            raise broken(
                self.source, f"{where}.{keys_field}", "no keys and not constant", NO_KEYS_ALLOWED
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
                f"entry {entry_id}: field {secondary_field} = {shown(secondary)} has no "
                "equivalent here (selective is false, so SillyTavern ignores them too; left out)",
            )
        if len(content) > CONTENT_MAX:
            what = f"{len(content)} characters"
            allowed = (
                f"at most {CONTENT_MAX} (fired entries share a small budget in every prompt; "
                "split it into entries with their own keys)"
            )
            raise broken(self.source, f"{where}.content", what, allowed)
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
            if depth > SCAN_DEPTH_MAX:
                self.notes.add(
                    "scan_depth",
                    entry_id,
                    f"entry {entry_id}: scan depth {depth} lowered to {SCAN_DEPTH_MAX} turns, "
                    "the most a lore entry scans here",
                )
                depth = SCAN_DEPTH_MAX
            data["scan_depth"] = depth
        if self.shared and CHAR_MACRO.search(content):
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
            raise broken(self.source, f"{where}: {at}", message, "see bot/lore.py") from None
        self.entries.append(data)

    def _key(self, key: str, entry_id: str, case_sensitive: bool) -> str:
        """A SillyTavern key as ours: JavaScript regex flags and named groups made Python's."""
        found = REGEX_KEY.match(key)
        if not found:
            return key
        pattern, flags = found["pattern"], found["flags"]
        pattern = re.sub(r"\(\?<(?![=!])", "(?P<", pattern)
        dropped = "".join(f for f in flags if f in JS_FLAGS_DROPPED)
        if dropped:
            flags = "".join(f for f in flags if f not in JS_FLAGS_DROPPED)
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
            found = REGEX_KEY.match(first_key)
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
            camel = BY_EXTENSION.get(base, base) if name.startswith("extensions.") else base
            known = KNOWN.get(camel)
            if name == "position" and isinstance(value, str):  # V2: before_char / after_char
                known = KNOWN["position"]
            if known is None:
                if is_empty(value, view):
                    self.neutral.add(name)
                    continue
                explanation = UNKNOWN
            else:
                if known[2](value, view):
                    self.neutral.add(name)
                    continue
                explanation = known[1]
            text = f"entry {entry_id}: field {name} = {shown(value)} has no equivalent here"
            self.unmapped.add(name, entry_id, f"{text} ({explanation})", shown(value))

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
                    if not is_empty(inner, {}):
                        text = f"book: field extensions.{key} = {shown(inner)} has no equivalent"
                        self.unmapped.add(f"book.extensions.{key}", "book", f"{text} ({UNKNOWN})")
                continue
            if is_empty(value, {}):
                continue
            explanation = BOOK_FIELDS.get(name, UNKNOWN)
            text = f"book: field {name} = {shown(value)} has no equivalent here ({explanation})"
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


def _first(*values: bool | None) -> bool | None:
    return next((v for v in values if v is not None), None)


def _joined(name: str, comment: str) -> str:
    if name and comment and name != comment:
        return f"{name}: {comment}"
    return name or comment

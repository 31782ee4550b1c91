"""Lore entries: short facts a character knows, put in the prompt when a message calls for them.

A card's `lore:` section (and the shared lorebooks it names, one YAML file per world in
`characters/_lorebooks/`) holds entries like

    - id: wife
      keys: [wife, married, Chi-Chi]          # words (whole, case-insensitive) or /regexes/
      content: Goku's wife is Chi-Chi. She is strict about Gohan's studies.
      questions: [Who is your wife?]          # knowledge training phrasings (optional)
      eval_questions: [Who did you marry?]    # held out for the report (optional)
      answer: ['chi-?chi']                    # an answer states the fact when one matches

A small model uses what sits right before the question and ignores what is ~900 tokens back
in the card, so fired entries go in the per-message tail of the prompt, never in the card
prefix (which must stay byte-identical for shared-prefix batching and prefix caching).
Which entries fire is `bot.lore_activation`; this module is the schema only.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

ENTRY_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
LOREBOOK_DIR = "_lorebooks"  # characters/_lorebooks/<name>.yaml: shared lorebooks
# A key written /like this/ (optionally with flags after the last slash) is a regex.
_REGEX_KEY = re.compile(r"^/(?P<pattern>.+)/(?P<flags>[a-z]*)$", re.DOTALL)
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
SelectiveLogic = Literal["and_any", "and_all", "not_any", "not_all"]


class LoreError(ValueError):
    """A key or entry that cannot be used; the message says what is allowed."""


def compile_key(key: str, *, case_sensitive: bool, whole_words: bool) -> re.Pattern[str]:
    """A key as a regex: `/pattern/flags` as written, else the words themselves (whole words
    unless `whole_words` is off), case-insensitive unless `case_sensitive`."""
    flags = 0 if case_sensitive else re.IGNORECASE
    found = _REGEX_KEY.match(key)
    if found:
        for flag in found["flags"]:
            if flag not in _REGEX_FLAGS:
                raise LoreError(
                    f"key {key!r}: unknown regex flag {flag!r}; allowed: "
                    f"{', '.join(_REGEX_FLAGS)} (e.g. /chi-?chi/i)"
                )
            flags |= _REGEX_FLAGS[flag]
        try:
            return re.compile(found["pattern"], flags)
        except re.error as exc:
            raise LoreError(f"key {key!r}: not a valid regex ({exc})") from None
    words = re.escape(key.strip())
    if whole_words:
        # \b only where the key starts or ends with a word character ("C-18" or "3rd!" too).
        words = (r"\b" if key.strip()[:1].isalnum() else "") + words
        words += r"\b" if key.strip()[-1:].isalnum() else ""
    return re.compile(words, flags)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class LoreEntry(_Strict):
    id: str = Field(pattern=ENTRY_ID_PATTERN)
    # Any key in the scanned text fires the entry; `secondary_keys` then narrow it down
    # (`selective_logic`: and_any = also one of them, and_all = all, not_any = none of them,
    # not_all = not all of them).
    keys: list[str] = []
    secondary_keys: list[str] = []
    selective_logic: SelectiveLogic = "and_any"
    content: str = Field(min_length=1, max_length=1000)  # third person, one or two sentences
    constant: bool = False  # always in the tail (within the budget), keys or not
    enabled: bool = True
    priority: int = 0  # when more fire than the budget holds, higher priority is kept first
    order: int = 100  # among the entries kept, lower order is placed first
    case_sensitive: bool = False
    whole_words: bool = True
    scan_depth: int | None = Field(None, ge=0, le=100)  # turns scanned; None: the config's
    comment: str = ""  # for creators; never in the prompt
    # Knowledge training and evaluation: phrasings of the question this entry answers, and
    # regexes (case-insensitive) one of which an answer that states the fact matches.
    questions: list[str] = []
    eval_questions: list[str] = []
    answer: list[str] = []
    _keys: tuple[re.Pattern[str], ...] = PrivateAttr(())
    _secondary: tuple[re.Pattern[str], ...] = PrivateAttr(())

    @field_validator("keys", "secondary_keys")
    @classmethod
    def _valid_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if not key.strip():
                raise ValueError("a key cannot be empty; write a word, a phrase or a /regex/")
        return value

    @field_validator("answer")
    @classmethod
    def _valid_answers(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"answer {pattern!r} is not a valid regex ({exc})") from None
        return value

    @model_validator(mode="after")
    def _usable(self) -> LoreEntry:
        for key in (*self.keys, *self.secondary_keys):
            try:
                compile_key(key, case_sensitive=self.case_sensitive, whole_words=self.whole_words)
            except LoreError as exc:
                raise ValueError(str(exc)) from None
        if not self.keys and not self.constant:
            raise ValueError(
                f"entry {self.id!r} has no keys; give it `keys` (words or /regexes/ that "
                "activate it) or `constant: true` (always in the prompt)"
            )
        if (self.questions or self.eval_questions) and not self.answer:
            raise ValueError(
                f"entry {self.id!r} has questions but no `answer`; add the regexes a correct "
                "answer matches (e.g. ['chi-?chi'])"
            )
        overlap = set(self.questions) & set(self.eval_questions)
        if overlap:
            raise ValueError(
                f"entry {self.id!r}: {sorted(overlap)[0]!r} is in both questions and "
                "eval_questions; eval questions must be phrasings training never uses"
            )
        return self

    def model_post_init(self, context: object) -> None:
        # Compiled once per entry (entries are frozen and live as long as the card).
        options = {"case_sensitive": self.case_sensitive, "whole_words": self.whole_words}
        self._keys = tuple(compile_key(k, **options) for k in self.keys)
        self._secondary = tuple(compile_key(k, **options) for k in self.secondary_keys)

    @property
    def key_patterns(self) -> tuple[re.Pattern[str], ...]:
        return self._keys

    @property
    def secondary_patterns(self) -> tuple[re.Pattern[str], ...]:
        return self._secondary

    def states_fact(self, answer: str) -> bool:
        """Whether `answer` states this entry's fact (one of its `answer` regexes matches)."""
        return any(re.search(p, answer, re.IGNORECASE) for p in self.answer)


class Lorebook(_Strict):
    """A shared lorebook: one world's entries, named by cards in `lorebooks:`."""

    name: str = Field(min_length=1, max_length=80)
    description: str = ""
    entries: list[LoreEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Lorebook:
        check_unique_ids(self.entries)
        return self


def check_unique_ids(entries: list[LoreEntry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ValueError(f"two lore entries have the id {entry.id!r}; ids must be unique")
        seen.add(entry.id)

"""Character cards (`characters/<id>/character.yaml`) and the registry that finds them."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from bot.guards import compile_pattern
from bot.lore import LOREBOOK_DIR, Lorebook, LoreEntry, check_unique_ids
from bot.yaml_files import YamlFileError, read_mapping, validate

CHARACTER_FILE = "character.yaml"
ADAPTER_DIR = "adapter"
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class CharacterError(Exception):
    """A card that cannot be loaded, or a name that matches no character."""


class UnknownCharacter(CharacterError):
    def __init__(self, name: str, suggestions: list[str], available: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = (
            f"did you mean {', '.join(suggestions)}?"
            if suggestions
            else f"available: {', '.join(available) or 'none'}"
        )
        super().__init__(f"No character called '{name}'; {hint}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Exchange(_Strict):
    """One user line and the character's answer: the unit of rule examples and dialogues."""

    user: str = Field(min_length=1)
    character: str = Field(min_length=1)


class Guard(_Strict):
    """The checkable part of a rule (see `bot.guards`): regexes, case-insensitive."""

    when: list[str] = []  # the message or the reply mentions one of these ...
    must_say: list[str] = []  # ... then the reply must match one of these
    never_say: list[str] = []  # the reply must match none of these (when `when` matches, if set)

    @field_validator("when", "must_say", "never_say")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            compile_pattern(pattern)
        return value

    @model_validator(mode="after")
    def _meaningful(self) -> Guard:
        if not self.must_say and not self.never_say:
            raise ValueError("a guard needs must_say or never_say")
        if self.must_say and not self.when:
            raise ValueError("must_say needs `when`: say when the reply must say it")
        return self

    def compiled(self) -> tuple[tuple[re.Pattern[str], ...], ...]:
        return tuple(
            tuple(compile_pattern(p) for p in patterns)
            for patterns in (self.when, self.never_say, self.must_say)
        )


class Mend(_Strict):
    """One way to mend an answer that breaks a rule, for preference training only: the mended
    answer is chosen over the answer itself (`preferences synth`), a pair that differs only
    where the rule was broken. Either `find` (a regex, case-insensitive) whose matches become
    `replace`, or `lead`: words put in front of the answer."""

    find: str | None = None
    replace: str = ""
    lead: str | None = None

    @field_validator("find")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Mend:
        if (self.find is None) == (self.lead is None):
            raise ValueError("a mend is either `find` (with `replace`) or `lead`")
        if self.lead is not None and self.replace:
            raise ValueError("`replace` goes with `find`, not with `lead`")
        if self.lead is not None and not self.lead:
            raise ValueError("`lead` needs the words to put in front")
        return self

    def apply(self, answer: str) -> str:
        if self.lead is not None:
            return f"{self.lead} {answer}"
        assert self.find is not None
        mended = compile_pattern(self.find).sub(self.replace, answer)
        return re.sub(r"\s+", " ", mended).strip()


class Rule(_Strict):
    rule: str = Field(min_length=1)
    examples: list[Exchange] = []  # shown in the prompt, and the guard's fallback answers
    # More exchanges that keep the rule, for preference training only (`preferences synth`
    # asks their questions): not in the prompt, so they cost no prompt tokens.
    training_examples: list[Exchange] = []
    # How an answer that breaks the rule is mended (preference training only), tried in order
    # until it keeps the rule.
    mends: list[Mend] = []
    # One guard, or a list when parts apply in different situations (one always, one `when`).
    guard: list[Guard] = []

    @field_validator("guard", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value

    @property
    def exchanges(self) -> list[Exchange]:
        """Every exchange that keeps the rule: the shown examples, then the training-only ones."""
        return [*self.examples, *self.training_examples]


class Character(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=80)
    aliases: list[str] = []
    description: str = Field(min_length=1)
    personality: list[str] = []
    speech_style: str = ""
    rules: list[Rule] = []
    scenario: str = ""
    greeting: str = Field(min_length=1)
    # Few-shot example dialogues (AliChat style): each a short conversation.
    examples: list[list[Exchange]] = []
    # Short in-character lines used when the model produced nothing usable.
    fallback_lines: list[str] = Field(default_factory=lambda: ["..."], min_length=1)
    avatar_url: str | None = None
    language: str = "en"
    # The default guard: the character never calls itself an AI (off for an android, say).
    ai_guard: bool = True
    # What the character knows (bot.lore): its own entries, and shared lorebooks by name
    # (characters/_lorebooks/<name>.yaml). Fired entries go in the prompt's tail.
    lore: list[LoreEntry] = []
    lorebooks: list[str] = []
    # Set by the registry, not the card.
    adapter_path: Path | None = Field(None, exclude=True)
    book_lore: tuple[LoreEntry, ...] = Field((), exclude=True)  # the lorebooks' entries

    @field_validator("lore")
    @classmethod
    def _unique_lore_ids(cls, value: list[LoreEntry]) -> list[LoreEntry]:
        check_unique_ids(value)
        return value

    @field_validator("lorebooks")
    @classmethod
    def _lorebook_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(ID_PATTERN, name):
                raise ValueError(
                    f"lorebook {name!r}: a lorebook is named by its file in "
                    f"characters/{LOREBOOK_DIR}/ without .yaml (lowercase, digits, - and _)"
                )
        return value

    @model_validator(mode="after")
    def _examples_pass_their_guards(self) -> Character:
        # A guard-breaking reply falls back to the rule's example answers: they must pass.
        from bot.guards import violations

        for index, rule in enumerate(self.rules):
            for field_name in ("examples", "training_examples"):
                for n, example in enumerate(getattr(rule, field_name)):
                    broken = violations(self, example.user, example.character)
                    if broken:
                        raise ValueError(
                            f"rules[{index}].{field_name}[{n}]: the answer "
                            f"{example.character[:60]!r} breaks a guard ({broken[0].rule[:60]!r}: "
                            f"it {broken[0].reason}); fix the answer or the guard"
                        )
        return self

    @field_validator("examples")
    @classmethod
    def _dialogues_not_empty(cls, value: list[list[Exchange]]) -> list[list[Exchange]]:
        if any(not dialogue for dialogue in value):
            raise ValueError("each example dialogue needs at least one exchange")
        return value

    @property
    def names(self) -> list[str]:
        """Display name first, then aliases: every name the character answers to."""
        return [self.name, *self.aliases]

    @property
    def lore_entries(self) -> tuple[LoreEntry, ...]:
        """Every entry this character knows: its own, then its lorebooks' (ids `book/id`)."""
        return (*self.lore, *self.book_lore)

    @property
    def has_adapter(self) -> bool:
        return self.adapter_path is not None

    def fallback(self, seed: int = 0) -> str:
        return self.fallback_lines[seed % len(self.fallback_lines)]


def adapter_dir(characters_dir: Path, character_id: str) -> Path:
    """Where a character's own LoRA adapter lives (it may not exist yet)."""
    return characters_dir / character_id / ADAPTER_DIR


ADAPTER_WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_version(path: Path) -> str:
    """A short hash of an adapter's weights ("" when there are none): /status shows which
    version each worker serves, and preference records say which version answered."""
    for name in ADAPTER_WEIGHTS_FILES:
        if (path / name).is_file():
            return hashlib.sha256((path / name).read_bytes()).hexdigest()[:12]
    return ""


def load_lorebook(path: Path) -> Lorebook:
    """One shared lorebook file; CharacterError naming file and line when it is broken."""
    try:
        data, text = read_mapping(path, "a lorebook has name, description and entries")
        return validate(Lorebook, path, data, text)
    except YamlFileError as exc:
        raise CharacterError(str(exc)) from None


def load_character(folder: Path) -> Character:
    """Load and validate one character folder (and the lorebooks its card names); raise
    CharacterError naming file, line and key."""
    path = folder / CHARACTER_FILE
    try:
        data, text = read_mapping(path, "every character folder needs one")
        character = validate(Character, path, data, text)
    except YamlFileError as exc:
        raise CharacterError(str(exc)) from None
    if character.id != folder.name:
        raise CharacterError(f"{path}: id '{character.id}' must match its folder '{folder.name}'")
    books: list[LoreEntry] = []
    for name in character.lorebooks:
        book_path = folder.parent / LOREBOOK_DIR / f"{name}.yaml"
        if not book_path.is_file():
            found = sorted(p.stem for p in (folder.parent / LOREBOOK_DIR).glob("*.yaml"))
            raise CharacterError(
                f"{path}: lorebook {name!r} not found at {book_path}; "
                f"available: {', '.join(found) or 'none'}"
            )
        book = load_lorebook(book_path)
        books += [e.model_copy(update={"id": f"{name}/{e.id}"}) for e in book.entries]
    update: dict[str, object] = {"book_lore": tuple(books)}
    adapter = adapter_dir(folder.parent, character.id)
    if (adapter / "adapter_config.json").exists():
        update["adapter_path"] = adapter
    return character.model_copy(update=update)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.casefold()).strip()


class CharacterRegistry:
    """All characters in a folder, looked up by id, display name or alias (case-insensitive)."""

    def __init__(self, characters: list[Character]) -> None:
        self._by_id = {c.id: c for c in sorted(characters, key=lambda c: c.id)}
        self._by_name: dict[str, Character] = {}
        for character in self._by_id.values():
            for name in (character.id, *character.names):
                other = self._by_name.setdefault(_normalise(name), character)
                if other.id != character.id:
                    raise CharacterError(
                        f"name '{name}' is used by both '{other.id}' and '{character.id}'"
                    )

    @classmethod
    def load(cls, folder: Path) -> CharacterRegistry:
        if not folder.is_dir():
            raise CharacterError(f"{folder}: characters folder not found")
        folders = sorted(p for p in folder.iterdir() if (p / CHARACTER_FILE).exists())
        return cls([load_character(p) for p in folders])

    def __iter__(self) -> Iterator[Character]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _normalise(name) in self._by_name

    @property
    def ids(self) -> list[str]:
        return list(self._by_id)

    def get(self, name: str) -> Character:
        """Find by id, name or alias; raise UnknownCharacter listing close matches."""
        found = self._by_name.get(_normalise(name))
        if found is not None:
            return found
        close = difflib.get_close_matches(_normalise(name), list(self._by_name), n=3, cutoff=0.6)
        suggestions = list(dict.fromkeys(self._by_name[c].id for c in close))
        raise UnknownCharacter(name, suggestions, self.ids)

    def search(self, prefix: str, limit: int = 25) -> list[Character]:
        """Characters whose id or a name starts with (or contains) the text, for autocomplete."""
        needle = _normalise(prefix)
        starts = [
            c for c in self if any(_normalise(n).startswith(needle) for n in (c.id, *c.names))
        ]
        contains = [c for c in self if c not in starts and needle in _normalise(c.name)]
        return (starts + contains)[:limit]

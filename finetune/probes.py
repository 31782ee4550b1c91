"""Rule probes: held-out questions whose answers are checked against a character's rules.

A character may ship `characters/<id>/data/sources/probes.yaml`, a YAML list of

    - question: Are you an AI?           # asked to the character
      rule: Is Goku, never says he is an AI
      must_not_match: '\\bas an ai\\b'    # an answer that matches this fails
      must_match: 'goku'                 # optional: an answer must also match this

At least one of the two regexes is required. Regexes are Python `re`, searched anywhere in
the answer, case-insensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bot.training_data import DatasetFiles
from finetune.errors import FinetuneError

_KEYS = ("question", "rule", "must_not_match", "must_match")


class ProbeError(FinetuneError, ValueError):
    """A probe file that cannot be used; the message starts with the path (and item)."""


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    return None if pattern is None else re.compile(pattern, re.IGNORECASE)


@dataclass
class Probe:
    """One question and the regex check its answer must pass."""

    question: str
    rule: str
    must_not_match: str | None = None
    must_match: str | None = None
    _not: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _must: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compile once here, so a bad regex fails at load time, not in the middle of an eval.
        self._not = _compile(self.must_not_match)
        self._must = _compile(self.must_match)

    def passes(self, answer: str) -> bool:
        """False if the answer matches must_not_match, or must_match is set and it doesn't."""
        if self._not is not None and self._not.search(answer):
            return False
        return self._must is None or self._must.search(answer) is not None


def _probe(item: object, where: str) -> Probe:
    if not isinstance(item, dict):
        raise ProbeError(
            f"{where}: expected a mapping with question/rule/must_not_match/must_match"
        )
    unknown = sorted(str(key) for key in item if key not in _KEYS)
    if unknown:
        raise ProbeError(f"{where}: unknown key(s) {unknown}; allowed: {list(_KEYS)}")
    for key in ("question", "rule"):
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ProbeError(f"{where}: missing '{key}' (a non-empty string)")
    for key in ("must_not_match", "must_match"):
        value = item.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ProbeError(f"{where}: '{key}' must be a non-empty regex string")
    if item.get("must_not_match") is None and item.get("must_match") is None:
        raise ProbeError(f"{where}: give must_not_match or must_match (or both)")
    try:
        return Probe(
            question=item["question"].strip(),
            rule=item["rule"].strip(),
            must_not_match=item.get("must_not_match"),
            must_match=item.get("must_match"),
        )
    except re.error as exc:
        bad = "must_not_match" if _bad_regex(item.get("must_not_match")) else "must_match"
        raise ProbeError(f"{where}: invalid regex in {bad}: {exc}") from None


def _bad_regex(pattern: str | None) -> bool:
    try:
        _compile(pattern)
    except re.error:
        return True
    return False


def load_probes(path: Path | str) -> list[Probe]:
    """Parse and validate a probes.yaml; errors read `path: item N: ...` (N counts from 1)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProbeError(f"{path}: cannot read the probes ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ProbeError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise ProbeError(f"{path}: expected a YAML list of probes, got {type(data).__name__}")
    return [_probe(item, f"{path}: item {n}") for n, item in enumerate(data, start=1)]


def character_probes(characters_dir: Path, character_id: str) -> list[Probe]:
    """The probes of one character (`DatasetFiles.probes`), or [] when it has none."""
    path = DatasetFiles.of(characters_dir, character_id).probes
    return load_probes(path) if path.is_file() else []

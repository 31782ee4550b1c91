"""Cleaning of lines and de-duplication of replies (after the QLoRA character-tuning recipe).

Rules, in order:
  1. Every line's text: Unicode NFKC (full-width letters and digits become plain ones), HTML-like
     tags and leftover `{...}` markup removed, stray symbols removed (music notes, bullets,
     boxes, stars, control and zero-width characters), runs of repeated punctuation capped
     (`!!!!!` -> `!!!`, `......` -> `...`), whitespace runs collapsed to one space.
  2. A line whose cleaned text matches a `drop_patterns` regex (re.search) is dropped, and so is
     a line left empty.
  3. Replies (the character's turns that would become training targets) shorter than
     `min_reply_chars` are not used as targets (the turn stays as context for later turns).
  4. Exact duplicates: replies equal after normalisation (casefold, punctuation and spaces
     removed) keep only their first occurrence as a target.
  5. Near duplicates: replies whose character 3-gram sets have Jaccard similarity >= the
     threshold with an earlier kept reply are not used as targets. Candidates come from a
     prefix-filter index (rarest 3-grams first), so the check is exact but near-linear.

Every removal is recorded as a `Dropped(reason, source, line, text)`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from finetune.sources import Dropped, Scene

REASON_EMPTY = "empty after cleaning"
REASON_PATTERN = "matches --drop-pattern"
REASON_SHORT = "reply shorter than --min-reply-chars"
REASON_DUPLICATE = "duplicate reply"
REASON_NEAR_DUPLICATE = "near-duplicate reply"

_TAGS = re.compile(r"</?[A-Za-z][^<>]*>|\{[^{}]*\}")
_STRAY = re.compile(
    "[\u266a\u266b\u266c\u266d\u266f\u2605\u2606\u25a0\u25a1\u25aa\u25ab\u25cf\u25cb\u25c6\u25c7"
    "\u2022\u203b\u00b6\u00a7\u2020\u2021\u3013\ufffd\u200b-\u200f\u2028\u2029\u2060\ufeff"
    "\x00-\x08\x0b-\x1f\x7f]"
)
_REPEATS = re.compile(r"([!?！？~ー-])\1{3,}|(\.)\2{3,}|(…)\3{2,}")
_WORD = re.compile(r"\w+")


def clean_text(text: str) -> str:
    """Rule 1: the cleaned text of one line ("" when nothing is left)."""
    text = unicodedata.normalize("NFKC", text)
    text = _TAGS.sub(" ", text)
    text = _STRAY.sub(" ", text)
    text = _REPEATS.sub(lambda m: (m[1] or m[2] or m[3]) * 3, text)
    text = " ".join(text.split())
    # Only symbols left (a lone "-" or "*"): nothing was said. "..." and "?!" are kept: silence
    # and surprise are answers too.
    if any(ch.isalnum() for ch in text) or re.fullmatch(r"[.?!…\s]+", text):
        return text
    return ""


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    from finetune.sources import BuildError

    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise BuildError(
                f"--drop-pattern {pattern!r}: not a valid regular expression ({exc}); "
                "allowed: Python `re` syntax, matched with re.search"
            ) from None
    return compiled


def clean_scenes(
    scenes: Sequence[Scene], drop_patterns: Sequence[re.Pattern[str]] = ()
) -> tuple[list[Scene], list[Dropped]]:
    """Rules 1 and 2 over every line; scenes left empty disappear."""
    cleaned: list[Scene] = []
    dropped: list[Dropped] = []
    for scene in scenes:
        lines = []
        for line in scene.lines:
            text = clean_text(line.text)
            if not text:
                if not line.context_only:
                    dropped.append(Dropped(REASON_EMPTY, line.source, line.line, line.text))
                continue
            if any(p.search(text) for p in drop_patterns):
                if not line.context_only:
                    dropped.append(Dropped(REASON_PATTERN, line.source, line.line, text))
                continue
            lines.append(replace(line, text=text))
        if lines:
            cleaned.append(replace(scene, lines=lines))
    return cleaned, dropped


def normalise(text: str) -> str:
    """The comparison key for duplicates: casefolded words only."""
    return " ".join(_WORD.findall(text.casefold()))


def shingles(text: str, size: int = 3) -> set[str]:
    key = normalise(text)
    if len(key) <= size:
        return {key}
    return {key[i : i + size] for i in range(len(key) - size + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    shared = len(a & b)  # |a | b| = |a| + |b| - shared, without building the union
    return shared / (len(a) + len(b) - shared)


def duplicate_flags(
    replies: Sequence[str], threshold: float = 0.9
) -> list[tuple[str | None, int | None]]:
    """For each reply: (None, None) to keep, or (reason, index of the earlier kept reply).

    Exact duplicates by `normalise`; near duplicates by 3-gram Jaccard >= threshold (threshold
    > 1 turns that off). Prefix filtering (PPJoin): with every 3-gram set ordered rarest first,
    two sets with Jaccard >= t share a gram among the first |x| - ceil(t * |x|) + 1 of each, and
    the grams' positions bound how much more they can share; only candidates that can still
    reach the threshold are compared in full. Exact, and fast on real text.
    """
    result: list[tuple[str | None, int | None]] = []
    first_seen: dict[str, int] = {}
    sets = [shingles(reply) for reply in replies]
    frequency = Counter(gram for s in sets for gram in s)
    index: dict[str, list[tuple[int, int]]] = {}  # gram -> (kept reply, position in its order)
    near = threshold <= 1
    for i, reply in enumerate(replies):
        key = normalise(reply)
        if key in first_seen:
            result.append((REASON_DUPLICATE, first_seen[key]))
            continue
        first_seen[key] = i
        size = len(sets[i])
        grams = sorted(sets[i], key=lambda g: (frequency[g], g))
        prefix = size - math.ceil(threshold * size) + 1
        found = _near_match(i, grams[:prefix], size, sets, index, threshold) if near else None
        if found is not None:
            result.append((REASON_NEAR_DUPLICATE, found))
            continue
        result.append((None, None))
        if near:
            for position, gram in enumerate(grams[:prefix]):
                index.setdefault(gram, []).append((i, position))
    return result


def _near_match(
    i: int,
    prefix: list[str],
    size: int,
    sets: Sequence[set[str]],
    index: dict[str, list[tuple[int, int]]],
    threshold: float,
) -> int | None:
    overlap: dict[int, int] = {}  # candidate -> shared prefix grams so far (-1: ruled out)
    for position, gram in enumerate(prefix):
        for j, other_position in index.get(gram, ()):
            if overlap.get(j) == -1:
                continue
            other = len(sets[j])
            if min(size, other) < threshold * max(size, other):
                overlap[j] = -1
                continue
            needed = math.ceil(threshold / (1 + threshold) * (size + other) - 1e-9)
            bound = 1 + min(size - position - 1, other - other_position - 1)
            if overlap.get(j, 0) + bound >= needed:
                overlap[j] = overlap.get(j, 0) + 1
            else:
                overlap[j] = -1
    for j in sorted(j for j, count in overlap.items() if count > 0):
        if jaccard(sets[i], sets[j]) >= threshold:
            return j
    return None

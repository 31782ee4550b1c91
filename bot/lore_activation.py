"""Which lore entries a message calls for: keys first, then similarity, within a token budget.

Deterministic and pure: the same message, history and scores give the same entries. Order of
work, after SillyTavern's World Info:
  1. constant entries fire always;
  2. an entry fires when one of its keys is in the new message or the last `scan_depth` turns
     (its own `scan_depth` if set), and its secondary keys agree (`selective_logic`);
  3. the entries most similar to the new message (cosine of sentence embeddings, computed by
     the caller: `bot.lore_retrieval`) above a threshold, at most `max_similar`, besides those
     that fired by key. (Only when no key fired, as first planned, finds the entry a held-out
     question is about 97 times in 151; beside the keys, 122: a key often fires on a
     neighbouring entry, "Saiyan" in "Which Saiyan prince is your rival?");
  4. the budget: entries by priority (higher first), then how they fired (constant, key,
     similarity; a higher score first), then card order; an entry that does not fit is left out
     and a smaller one after it may still fit.
The kept entries are placed by `order` (then card order) right before the new message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bot.history import Turn
from bot.lore import LoreEntry

Reason = str  # "constant" | "key" | "similarity"
_RANK = {"constant": 0, "key": 1, "similarity": 2}


@dataclass(frozen=True)
class LoreOptions:
    budget: int = 160  # tokens for the fired entries' text
    scan_depth: int = 2  # history turns scanned for keys, besides the new message
    similarity_threshold: float = 0.45  # cosine to the message
    max_similar: int = 2  # entries taken by similarity at most


@dataclass(frozen=True)
class LoreHit:
    """One entry that fired, and why: the key that matched or the similarity score."""

    entry: LoreEntry
    reason: Reason
    key: str = ""  # the text that matched a key
    score: float | None = None  # cosine similarity, for reason "similarity"
    index: int = 0  # position among the character's entries (card order)

    @property
    def why(self) -> str:
        if self.reason == "key":
            return f"key {self.key!r}"
        if self.reason == "similarity":
            return f"similarity {self.score:.2f}"
        return "constant"


@dataclass(frozen=True)
class LoreSelection:
    kept: tuple[LoreHit, ...]  # in placement order
    dropped: tuple[LoreHit, ...] = ()  # fired but over the budget

    @property
    def ids(self) -> list[str]:
        return [hit.entry.id for hit in self.kept]


def scanned_texts(message: Turn, history: Sequence[Turn], depth: int) -> list[str]:
    """The new message, then the newest `depth` turns of history (authors included: a name in
    who spoke is as much a cue as a name in what was said)."""
    recent = list(history)[-depth:] if depth > 0 else []
    return [message.content, *(f"{t.author}: {t.content}" for t in reversed(recent))]


def key_hit(entry: LoreEntry, texts: Sequence[str]) -> str | None:
    """The matched text when the entry's keys (and secondary keys) fire on `texts`, else None."""
    matched = None
    for pattern in entry.key_patterns:
        for text in texts:
            found = pattern.search(text)
            if found:
                matched = found[0]
                break
        if matched is not None:
            break
    if matched is None:
        return None
    secondary = entry.secondary_patterns
    if not secondary:
        return matched
    present = [any(p.search(text) for text in texts) for p in secondary]
    logic = entry.selective_logic
    agrees = (
        any(present)
        if logic == "and_any"
        else all(present)
        if logic == "and_all"
        else not any(present)
        if logic == "not_any"
        else not all(present)
    )
    return matched if agrees else None


def fired_entries(
    entries: Sequence[LoreEntry],
    message: Turn,
    history: Sequence[Turn],
    *,
    options: LoreOptions,
    similarities: Callable[[], Mapping[str, float]] | None = None,
) -> list[LoreHit]:
    """Every enabled entry that fires, before the budget. `similarities` maps entry id ->
    cosine to the message (None: keys only)."""
    hits: list[LoreHit] = []
    for index, entry in enumerate(entries):
        if not entry.enabled:
            continue
        if entry.constant:
            hits.append(LoreHit(entry, "constant", index=index))
            continue
        depth = options.scan_depth if entry.scan_depth is None else entry.scan_depth
        matched = key_hit(entry, scanned_texts(message, history, depth))
        if matched is not None:
            hits.append(LoreHit(entry, "key", key=matched, index=index))
    if similarities is not None:
        scores = similarities()
        fired = {h.entry.id for h in hits}
        ranked = sorted(
            (
                (scores[e.id], i, e)
                for i, e in enumerate(entries)
                if e.enabled and e.id not in fired and e.id in scores
            ),
            key=lambda item: (-item[0], item[1]),
        )
        for score, index, entry in ranked[: options.max_similar]:
            if score >= options.similarity_threshold:
                hits.append(LoreHit(entry, "similarity", score=score, index=index))
    return hits


def within_budget(
    hits: Sequence[LoreHit], budget: int, cost: Callable[[str], int]
) -> LoreSelection:
    """The hits that fit `budget` tokens, most important first; placed by `order`."""

    def importance(hit: LoreHit) -> tuple[int, int, float, int]:
        return (-hit.entry.priority, _RANK[hit.reason], -(hit.score or 0.0), hit.index)

    kept, dropped, used = [], [], 0
    for hit in sorted(hits, key=importance):
        tokens = cost(hit.entry.content)
        if used + tokens <= budget:
            kept.append(hit)
            used += tokens
        else:
            dropped.append(hit)
    kept.sort(key=lambda hit: (hit.entry.order, hit.index))
    return LoreSelection(tuple(kept), tuple(dropped))

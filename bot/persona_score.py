"""The persona score: which of several sampled replies is most like the character.

    score = LLR - ECHO_WEIGHT * echo - REPEAT_WEIGHT * repeat

LLR is how much likelier the reply is under the character (card + adapter) than under the bare
base model (no card, no adapter), per token: a reply any assistant would give scores near 0, one
only this character would give scores high. Two penalties keep the cheap ways to look in
character out: echoing the user's message back, and saying again what the channel already heard.
Both are the share of the reply's word n-grams found in the other text (0 = none, 1 = all).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Penalties in nats per token, the LLR's unit: a reply that only echoes loses 1.5 nats/token,
# more than adapters and cards gain on a typical reply (0.1-1 nats/token on the seed cast).
ECHO_WEIGHT = 1.5
REPEAT_WEIGHT = 1.5
NGRAM = 3

_WORD = re.compile(r"[a-z0-9']+")


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def overlap(reply: str, other: str, n: int = NGRAM) -> float:
    """Share of the reply's word n-grams (fewer words: the whole reply) also in `other`."""
    words = _WORD.findall(reply.lower())
    size = min(n, len(words))
    if size == 0:
        return 0.0
    mine = _ngrams(words, size)
    return len(mine & _ngrams(_WORD.findall(other.lower()), size)) / len(mine)


def persona_score(
    llr_per_token: float, reply: str, message: str, said_before: Iterable[str]
) -> float:
    """The score of one candidate; `said_before`: the channel's earlier character lines."""
    echo = overlap(reply, message)
    repeat = max((overlap(reply, line) for line in said_before), default=0.0)
    return llr_per_token - ECHO_WEIGHT * echo - REPEAT_WEIGHT * repeat

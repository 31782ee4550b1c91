"""Similarity of a message to a character's lore entries (MiniLM sentence embeddings).

Used by `bot.lore_activation` beside the keys. An entry is represented by its
content and its training questions (phrasings a creator wrote for it; the held-out
`eval_questions` never are): its score is the best cosine of the message to any of them.
Entry vectors are computed once per character and kept.
"""

from __future__ import annotations

import threading

import torch

from bot.characters import Character
from bot.embeddings import SentenceEncoder
from bot.lore import LoreEntry


def entry_texts(entry: LoreEntry) -> list[str]:
    return [entry.content, *entry.questions]


class LoreRetriever:
    def __init__(self, encoder: SentenceEncoder) -> None:
        self.encoder = encoder
        self._index: dict[tuple[str, int], tuple[list[str], torch.Tensor, list[int]]] = {}
        self._lock = threading.Lock()  # prompts are built on worker threads

    def _entries(self, character: Character) -> tuple[list[str], torch.Tensor, list[int]]:
        entries = [e for e in character.lore_entries if e.enabled and not e.constant]
        key = (character.id, hash(tuple((e.id, *entry_texts(e)) for e in entries)))
        with self._lock:
            if key not in self._index:
                ids, texts, owner = [e.id for e in entries], [], []
                for n, entry in enumerate(entries):
                    for text in entry_texts(entry):
                        texts.append(text)
                        owner.append(n)
                self._index[key] = (ids, self.encoder.encode(texts), owner)
            return self._index[key]

    def similarities(self, character: Character, message: str) -> dict[str, float]:
        """Entry id -> the best cosine of `message` to the entry's content or questions."""
        ids, vectors, owner = self._entries(character)
        if not ids:
            return {}
        with self._lock:  # the encoder's cache is not thread-safe
            query = self.encoder.encode([message], cache=False)[0]
        cosines = (vectors @ query).tolist()
        best = [-1.0] * len(ids)
        for n, score in zip(owner, cosines, strict=True):
            best[n] = max(best[n], score)
        return dict(zip(ids, best, strict=True))

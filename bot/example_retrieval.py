"""Few-shot examples chosen per message (the ChatHaruhi idea).

Instead of the card's fixed example dialogues, the prompt gets the character's own lines whose
question is most similar to the new message: the card's examples and rule examples (shown and
training-only) plus the training set (`DatasetFiles.train`, never eval lines). Embeddings are
computed once per character and cached.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from bot.characters import Character, Exchange
from bot.embeddings import SentenceEncoder
from bot.training_data import DatasetFiles, RecordError, read_records

log = logging.getLogger(__name__)


def character_exchanges(character: Character, characters_dir: Path) -> list[Exchange]:
    """Every (user line, character reply) pair the character has, card first, no duplicates."""
    pairs = [e for dialogue in character.examples for e in dialogue]
    pairs += [e for rule in character.rules for e in rule.exchanges]
    train = DatasetFiles.of(characters_dir, character.id).train
    if train.is_file():
        try:
            records = read_records(train)
        except RecordError as exc:
            # The card's own examples still work; the bot keeps answering.
            log.error("%s; retrieved examples use the card only", exc)
            records = []
        for record in records:
            if record.message is not None and record.reply:
                pairs.append(Exchange(user=record.message.content, character=record.reply))
    seen: set[tuple[str, str]] = set()
    unique = []
    for pair in pairs:
        if (pair.user, pair.character) not in seen:
            seen.add((pair.user, pair.character))
            unique.append(pair)
    return unique


class ExampleRetriever:
    def __init__(self, encoder: SentenceEncoder, characters_dir: Path) -> None:
        self.encoder = encoder
        self.characters_dir = characters_dir
        self._pools: dict[str, tuple[list[Exchange], torch.Tensor]] = {}
        self._lock = threading.Lock()  # prompts are built on worker threads

    def _pool(self, character: Character) -> tuple[list[Exchange], torch.Tensor]:
        with self._lock:
            if character.id not in self._pools:
                pairs = character_exchanges(character, self.characters_dir)
                vectors = self.encoder.encode([p.user for p in pairs]) if pairs else None
                self._pools[character.id] = (pairs, vectors)
            return self._pools[character.id]

    def select(self, character: Character, message: str, k: int) -> list[list[Exchange]]:
        """The k exchanges whose user line is closest to `message`, most similar first."""
        pairs, vectors = self._pool(character)
        if not pairs or not message.strip():
            return [list(d) for d in character.examples]
        with self._lock:
            # Not cached: every message is new, and the bot runs for weeks.
            query = self.encoder.encode([message], cache=False)[0]
        scores = vectors @ query
        order = torch.argsort(scores, descending=True)[:k].tolist()
        return [[pairs[i]] for i in order]

    def with_examples(self, character: Character, message: str, k: int) -> Character:
        """The character with its examples replaced by the ones retrieved for `message`."""
        return character.model_copy(update={"examples": self.select(character, message, k)})

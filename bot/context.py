"""Context assembly: the one place a prompt is put together for the bot, the console,
training and evaluation.

The prompt has a fixed prefix (the card and its example dialogues, byte-identical for every
message to a character) and a per-message tail (history that fits, then the lore entries this
message calls for, then the message): see `bot.prompt.build_prompt`. This class decides what
goes in the tail (lore by `bot.lore_activation`, similarity by `bot.lore_retrieval`) and which
examples go in the prefix (fixed, or retrieved per message).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from bot.characters import Character
from bot.config import Config, PromptConfig
from bot.history import Turn
from bot.lore_activation import LoreOptions, LoreSelection, fired_entries, within_budget
from bot.prompt import ChatTokenizer, Prompt, build_prompt, count_tokens

if TYPE_CHECKING:  # both import torch: only when similarity or retrieval is on
    from bot.example_retrieval import ExampleRetriever
    from bot.lore_retrieval import LoreRetriever


def lore_options(config: PromptConfig) -> LoreOptions:
    return LoreOptions(
        budget=config.lore_budget,
        scan_depth=config.lore_scan_depth,
        similarity_threshold=config.lore_similarity,
        max_similar=config.lore_similar_entries,
    )


class PromptAssembler:
    def __init__(
        self,
        tokenizer: ChatTokenizer,
        config: PromptConfig,
        *,
        lore_retriever: LoreRetriever | None = None,
        example_retriever: ExampleRetriever | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.lore_retriever = lore_retriever  # None: lore fires by key (and constant) only
        self.example_retriever = example_retriever  # set: few-shot examples per message
        self._cost = functools.lru_cache(maxsize=4096)(lambda text: count_tokens(tokenizer, text))

    @classmethod
    def from_config(
        cls, tokenizer: ChatTokenizer, config: Config, characters: Iterable[Character]
    ) -> PromptAssembler:
        """With the embedding retrievers the config asks for (MiniLM, loaded once per process):
        lore by similarity when one of `characters` has lore, examples per message when
        `prompt.examples` is `retrieved`."""
        prompt = config.prompt
        lore_retriever = example_retriever = None
        wants_similarity = prompt.lore and prompt.lore_similar_entries > 0
        if wants_similarity and any(c.lore_entries for c in characters):
            from bot.embeddings import load_encoder
            from bot.lore_retrieval import LoreRetriever

            lore_retriever = LoreRetriever(load_encoder())
        if prompt.examples == "retrieved":
            from bot.embeddings import load_encoder
            from bot.example_retrieval import ExampleRetriever

            example_retriever = ExampleRetriever(load_encoder(), config.characters_path)
        return cls(
            tokenizer, prompt, lore_retriever=lore_retriever, example_retriever=example_retriever
        )

    def lore(self, character: Character, history: Sequence[Turn], message: Turn) -> LoreSelection:
        """The lore entries `message` calls for, within the lore budget, and why each fired."""
        if not self.config.lore or not character.lore_entries:
            return LoreSelection(())
        retriever = self.lore_retriever
        similarities = (
            (lambda: retriever.similarities(character, message.content))
            if retriever is not None
            else None
        )
        options = lore_options(self.config)
        hits = fired_entries(
            character.lore_entries, message, history, options=options, similarities=similarities
        )
        return within_budget(hits, options.budget, self._cost)

    def build(
        self,
        character: Character,
        history: Sequence[Turn],
        message: Turn,
        *,
        lore: bool = True,
        budget: int | None = None,
    ) -> Prompt:
        """The prompt for `message` after `history`; `lore=False` leaves the lore out (e.g. to
        measure what the adapter knows on its own)."""
        if self.example_retriever is not None:
            k = self.config.retrieved_examples
            character = self.example_retriever.with_examples(character, message.content, k)
        selection = self.lore(character, history, message) if lore else LoreSelection(())
        return build_prompt(
            character,
            history,
            message,
            tokenizer=self.tokenizer,
            budget=self.config.token_budget if budget is None else budget,
            lore=selection.kept,
        )

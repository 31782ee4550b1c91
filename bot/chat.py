"""The chat service: one character answers one message in one channel, remembering the channel.

Knows nothing of Discord: the console, the Discord cogs and the tests all call this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bot.characters import Character, CharacterRegistry
from bot.config import Config
from bot.engine import Batcher, GenerationRequest, GenerationResult, SamplingSettings
from bot.example_retrieval import ExampleRetriever
from bot.history import HistoryStore, Turn
from bot.postprocess import clean_reply
from bot.prompt import Prompt, build_prompt


@dataclass(frozen=True)
class Reply:
    character: Character
    text: str
    prompt: Prompt
    result: GenerationResult


def clean_character_reply(
    character: Character,
    text: str,
    *,
    cast: Iterable[Character],
    authors: Iterable[str],
    hit_token_limit: bool = False,
    fallback: str = "",
) -> str:
    """`clean_reply` for `character`: the other characters of `cast` and the `authors` are the
    speakers whose turns the model must not write."""
    others = {c.name for c in cast if c.id != character.id} | set(authors)
    return clean_reply(
        text,
        speaker_names=character.names,
        other_speakers=sorted(others - set(character.names)),
        hit_token_limit=hit_token_limit,
        fallback=fallback,
    )


class ChatService:
    def __init__(
        self,
        *,
        config: Config,
        registry: CharacterRegistry,
        history: HistoryStore,
        batcher: Batcher,
        tokenizer: Any,
        retriever: ExampleRetriever | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.history = history
        self.batcher = batcher
        self.tokenizer = tokenizer
        self.retriever = retriever  # set: few-shot examples are picked per message
        self.settings = SamplingSettings.from_config(config.generation)

    def _build(self, character: Character, history: list[Turn], message: Turn) -> Prompt:
        if self.retriever is not None:
            k = self.config.prompt.retrieved_examples
            character = self.retriever.with_examples(character, message.content, k)
        return build_prompt(
            character,
            history,
            message,
            tokenizer=self.tokenizer,
            budget=self.config.prompt.token_budget,
        )

    async def prompt_for(
        self, channel_id: str | int, character: Character, message: Turn
    ) -> tuple[Prompt, list[Turn]]:
        """The prompt the model would see for `message` now, and the history it came from."""
        history = await self.history.recent(channel_id)
        prompt = await asyncio.to_thread(self._build, character, history, message)
        return prompt, history

    async def reply(
        self,
        channel_id: str | int,
        character: Character,
        *,
        author: str,
        content: str,
        on_text: Callable[[str], None] | None = None,
    ) -> Reply:
        """Generate `character`'s answer to `author`'s message and record both turns."""
        message = Turn(role="user", author=author, content=content, character_id=character.id)
        prompt, history = await self.prompt_for(channel_id, character, message)
        result = await self.batcher.submit(
            GenerationRequest(
                prompt=prompt.text,
                settings=self.settings,
                adapter=character.id,  # the engine serves characters without one on the base
                on_text=on_text,
            )
        )
        text = self.clean(
            character,
            result.text,
            authors=[author, *(t.author for t in history)],
            hit_token_limit=result.hit_token_limit,
            fallback=character.fallback(len(history)),
        )
        answer = Turn(
            role="character", author=character.name, content=text, character_id=character.id
        )
        # Both turns in one transaction, after generation: a failed reply leaves no half exchange.
        await self.history.append(channel_id, message, answer)
        return Reply(character, text, prompt, result)

    def clean(
        self,
        character: Character,
        text: str,
        *,
        authors: list[str],
        hit_token_limit: bool = False,
        fallback: str = "",
    ) -> str:
        """Post-process model output; `authors` are the people whose turns it must not write."""
        return clean_character_reply(
            character,
            text,
            cast=self.registry,
            authors=authors,
            hit_token_limit=hit_token_limit,
            fallback=fallback,
        )

    async def greet(self, channel_id: str | int, character: Character) -> str:
        """Record the character's greeting as its first line in the channel and return it."""
        turn = Turn(
            role="character",
            author=character.name,
            content=character.greeting,
            character_id=character.id,
        )
        await self.history.append(channel_id, turn)
        return character.greeting

    async def forget(self, channel_id: str | int) -> int:
        return await self.history.clear(channel_id)

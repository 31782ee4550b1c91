"""The chat service: one character answers one message in one channel, remembering the channel.

Knows nothing of Discord: the console, the Discord cogs and the tests all call this.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot.characters import Character, CharacterRegistry
from bot.config import Config
from bot.generation import (
    GenerationBackend,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    TextCallback,
)
from bot.guards import Violation, breaks_never_guard, violations
from bot.history import HistoryStore, Turn
from bot.postprocess import clean_reply
from bot.prompt import Prompt, build_prompt, neutralize_special_tokens

if TYPE_CHECKING:
    from bot.example_retrieval import ExampleRetriever  # imports torch: only when retrieving

log = logging.getLogger(__name__)

GUARD_ATTEMPTS = 2  # the reply, and one resample when it breaks a guard; then the fallback
RESAMPLE_TEMPERATURE = 0.9


@dataclass(frozen=True)
class Reply:
    """A generated answer, not yet remembered: the caller posts it, then `ChatService.remember`s
    what was actually shown."""

    character: Character
    text: str
    prompt: Prompt
    result: GenerationResult
    message: Turn  # the user's turn it answers, as stored (template tokens neutralized)
    # Guards the model's replies broke, in order (empty: the first reply passed), and what was
    # done: "" (nothing to do), "resampled" (the second sample passed) or "fallback".
    broken: tuple[Violation, ...] = ()
    guard_action: str = ""

    def answer_turn(self, text: str | None = None) -> Turn:
        return Turn(
            role="character",
            author=self.character.name,
            content=self.text if text is None else text,
            character_id=self.character.id,
        )


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


def guarded_fallback(
    character: Character, message: str, broken: list[Violation], *, seed: int = 0
) -> str:
    """What a character says when every sample broke a guard: the broken rule's example answer
    whose question is closest to the message, else one of the card's fallback lines."""
    examples = [
        example
        for violation in broken
        if violation.rule_index is not None
        for example in character.rules[violation.rule_index].examples
    ]
    words = _content_words(message)
    scored = [(len(words & _content_words(e.user)), e) for e in examples]
    best = max(scored, key=lambda pair: pair[0], default=(0, None))
    # An example about something else would answer the wrong question: a fallback line is
    # vaguer, but never off topic.
    return best[1].character if best[1] is not None and best[0] > 0 else character.fallback(seed)


def _content_words(text: str) -> set[str]:
    """Words of four letters or more: enough to tell what a question is about."""
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if len(w) >= 4}


class ChatService:
    def __init__(
        self,
        *,
        config: Config,
        registry: CharacterRegistry,
        history: HistoryStore,
        backend: GenerationBackend,
        retriever: ExampleRetriever | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.history = history
        self.backend = backend
        self.tokenizer = backend.tokenizer
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

    def user_turn(self, character: Character, *, author: str, content: str) -> Turn:
        """A user's message as it is prompted and stored: text that spells the model's special
        tokens (`<|im_start|>system ...`) stays text, in this prompt and in every later one."""
        return Turn(
            role="user",
            author=neutralize_special_tokens(author, self.tokenizer),
            content=neutralize_special_tokens(content, self.tokenizer),
            character_id=character.id,
        )

    async def reply(
        self,
        channel_id: str | int,
        character: Character,
        *,
        author: str,
        content: str,
        on_text: TextCallback | None = None,
    ) -> Reply:
        """Generate `character`'s answer to `author`'s message and record both turns (for
        callers that show the reply for sure, like the console)."""
        reply = await self.answer(
            channel_id, character, author=author, content=content, on_text=on_text
        )
        await self.remember(channel_id, reply)
        return reply

    async def answer(
        self,
        channel_id: str | int,
        character: Character,
        *,
        author: str,
        content: str,
        on_text: TextCallback | None = None,
    ) -> Reply:
        """Generate `character`'s answer to `author`'s message; nothing is stored yet.

        `on_text` gets the raw text so far while it is generated (it may start over);
        BackendUnavailable when the model cannot answer now."""
        message = self.user_turn(character, author=author, content=content)
        prompt, history = await self.prompt_for(channel_id, character, message)
        authors = [message.author, *(t.author for t in history)]
        broken: list[Violation] = []
        settings = self.settings
        for attempt in range(GUARD_ATTEMPTS):
            result = await self.backend.generate(
                GenerationRequest(
                    prompt=prompt.text,
                    settings=settings,
                    adapter=character.id,  # the engine serves characters without one on the base
                    on_text=on_text if attempt == 0 else None,
                )
            )
            text = self.clean(
                character,
                result.text,
                authors=authors,
                hit_token_limit=result.hit_token_limit,
                fallback=character.fallback(len(history)),
            )
            found = violations(character, message.content, text)
            if not found:
                action = "resampled" if broken else ""
                return Reply(character, text, prompt, result, message, tuple(broken), action)
            broken += found
            # Greedy decoding would say the same again: the second try samples.
            settings = replace(
                settings, temperature=max(settings.temperature, RESAMPLE_TEMPERATURE)
            )
        text = guarded_fallback(character, message.content, broken, seed=len(history))
        log.info("%s's replies broke %s; answered with a rule's example", character.id, broken)
        return Reply(character, text, prompt, result, message, tuple(broken), "fallback")

    def preview(self, character: Character, raw: str, *, message: str, authors: list[str]) -> str:
        """Streamed text as it may be shown: cleaned, and nothing while it already says what a
        guard forbids (the final reply replaces it)."""
        text = self.clean(character, raw, authors=authors)
        return "" if breaks_never_guard(character, message, text) else text

    async def remember(
        self, channel_id: str | int, reply: Reply, shown_text: str | None = None
    ) -> None:
        """Store the message and the answer as shown (`shown_text`: the part that was posted,
        when not all of it was). Both turns in one transaction: never half an exchange."""
        await self.history.append(channel_id, reply.message, reply.answer_turn(shown_text))

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

    async def remembered(self, channel_id: str | int) -> list[Turn]:
        """The channel's memory, oldest first (what /history shows)."""
        return await self.history.recent(channel_id)

    async def remembered_count(self, channel_id: str | int) -> int:
        return await self.history.count(channel_id)

    async def forget(self, channel_id: str | int) -> int:
        """Clear the channel's memory (the only way it is deleted); returns the turns removed."""
        return await self.history.clear(channel_id)

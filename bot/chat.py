"""The chat service: one character answers one message in one channel, remembering the channel.

Knows nothing of Discord: the console, the Discord cogs and the tests all call this. The
prompt comes from the channel's memory here; writing the reply itself is the Responder's.
"""

from __future__ import annotations

import asyncio
import logging

from bot.characters import Character, CharacterRegistry
from bot.config import Config
from bot.context import PromptAssembler
from bot.generation import GenerationBackend, TextCallback
from bot.history import HistoryStore, Turn
from bot.prompt import Prompt, neutralize_special_tokens
from bot.responder import Reply, Responder

log = logging.getLogger(__name__)


class ChatService:
    def __init__(
        self,
        *,
        config: Config,
        registry: CharacterRegistry,
        history: HistoryStore,
        backend: GenerationBackend,
        assembler: PromptAssembler | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.history = history
        self.backend = backend
        self.tokenizer = backend.tokenizer
        # Lore by key only, fixed examples, unless the caller brings the embedding retrievers.
        self.assembler = assembler or PromptAssembler(self.tokenizer, config.prompt)
        self.responder = Responder(generation=config.generation, cast=registry, backend=backend)

    def _build(self, character: Character, history: list[Turn], message: Turn) -> Prompt:
        prompt = self.assembler.build(character, history, message)
        if prompt.lore:  # ids only: never message text in logs
            log.debug("%s: lore %s", character.id, ", ".join(h.entry.id for h in prompt.lore))
        return prompt

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

        `on_text` gets the raw text so far while it is generated, when `streams` (it may start
        over); BackendUnavailable when the model cannot answer now."""
        message = self.user_turn(character, author=author, content=content)
        prompt, history = await self.prompt_for(channel_id, character, message)
        return await self.responder.respond(character, prompt, message, history, on_text)

    @property
    def streams(self) -> bool:
        """Whether a reply can be shown while it is generated (not when several candidates
        are sampled: the winner is only known at the end)."""
        return self.responder.streams

    def preview(self, character: Character, raw: str, *, message: str, authors: list[str]) -> str:
        """Streamed text as it may be shown (see Responder.preview)."""
        return self.responder.preview(character, raw, message=message, authors=authors)

    async def remember(
        self, channel_id: str | int, reply: Reply, shown_text: str | None = None
    ) -> None:
        """Store the message and the answer as shown (`shown_text`: the part that was posted,
        when not all of it was). Both turns in one transaction: never half an exchange."""
        await self.history.append(channel_id, reply.message, reply.answer_turn(shown_text))

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

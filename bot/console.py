"""Console chat: the same services as the Discord bot, in a terminal or a pipe.

Reads one message per line (so `printf 'hi\\nbye\\n' | python -m bot console` works) and keeps
history in Redis under one console channel, so a second run remembers the first.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import TextIO

from bot.characters import Character, CharacterError
from bot.config import ConfigError, load_config
from bot.generation import BackendUnavailable
from bot.services import Services, open_services

log = logging.getLogger(__name__)

CONSOLE_CHANNEL = "console"
HELP = (
    "Commands: /summon NAME (switch character), /characters, /forget (clear memory), "
    "/help, /quit. Anything else is a message."
)


class Console:
    def __init__(
        self,
        services: Services,
        character: Character,
        *,
        user_name: str = "User",
        stdin: TextIO = sys.stdin,
        stdout: TextIO = sys.stdout,
        channel_id: str = CONSOLE_CHANNEL,
    ) -> None:
        self.services = services
        self.character = character
        self.user_name = user_name
        self.stdin = stdin
        self.stdout = stdout
        self.channel_id = channel_id
        self.interactive = stdin.isatty()

    def say(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    def say_as(self, character: Character, text: str) -> None:
        self.say(f"{character.name}: {text}")

    async def read_line(self) -> str | None:
        if self.interactive:
            self.stdout.write(f"{self.user_name}> ")
            self.stdout.flush()
        line = await asyncio.to_thread(self.stdin.readline)
        return None if line == "" else line.rstrip("\r\n")

    async def summon(self, name: str) -> None:
        try:
            self.character = self.services.registry.get(name)
        except CharacterError as exc:
            self.say(f"(!) {exc}")
            return
        self.say_as(self.character, await self.services.chat.greet(self.channel_id, self.character))

    async def handle_command(self, line: str) -> bool:
        """Run a /command; return False when the chat should end."""
        command, _, argument = line.partition(" ")
        match command.lower():
            case "/quit" | "/exit":
                return False
            case "/summon" if argument.strip():
                await self.summon(argument.strip())
            case "/summon":
                self.say("(!) Usage: /summon NAME, e.g. /summon goku")
            case "/forget":
                removed = await self.services.chat.forget(self.channel_id)
                self.say(f"(memory cleared: {removed} turns forgotten)")
            case "/characters":
                for c in self.services.registry:
                    self.say(f"  {c.id:<10} {c.name}: {c.description.split('. ')[0]}.")
            case _:
                self.say(f"(!) Unknown command {command}. {HELP}")
        return True

    async def run(self) -> None:
        remembered = await self.services.history.count(self.channel_id)
        if self.interactive:
            self.say(f"Chatting with {self.character.name}. {HELP}")
        if remembered:
            self.say(f"(remembering {remembered} earlier turns; /forget clears them)")
        else:
            self.say_as(
                self.character, await self.services.chat.greet(self.channel_id, self.character)
            )
        while (line := await self.read_line()) is not None:
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not await self.handle_command(line):
                    break
                continue
            try:
                reply = await self.services.chat.reply(
                    self.channel_id, self.character, author=self.user_name, content=line
                )
            except BackendUnavailable as exc:
                self.say(f"(!) {exc}")
                continue
            self.say_as(self.character, reply.text)


async def run_console(
    character_name: str | None,
    user_name: str,
    *,
    adapter: Path | None = None,
    channel_id: str = "console",
) -> None:
    """The console chat; `adapter` serves the character with that adapter folder instead."""
    config = load_config()
    services = await open_services(config)
    try:
        character = services.registry.get(character_name or config.default_character)
        if adapter is not None:
            await _try_adapter(services, character, adapter)
        await Console(services, character, user_name=user_name, channel_id=channel_id).run()
    finally:
        await services.close()


async def _try_adapter(services: Services, character: Character, adapter: Path) -> None:
    """Serve `character` with another adapter folder, in this process only."""
    from bot.generation.embedded import EmbeddedBackend

    backend = services.backend
    if not isinstance(backend, EmbeddedBackend):
        raise ConfigError(
            f"trying an adapter folder needs backend.mode: embedded (it is {backend.mode}); "
            "copy the adapter to the character's folder and /reload-adapter instead"
        )
    await backend.batcher.run(backend.engine.load_adapter, character.id, adapter)
    log.info("%s speaks with the adapter in %s", character.name, adapter)

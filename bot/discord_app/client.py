"""The Discord bot: a `commands.Bot` whose `setup_hook` connects the services and loads the cogs."""

from __future__ import annotations

import asyncio
import logging
import signal

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Config, ConfigError
from bot.discord_app.notices import MEMORY_DOWN, STORE_ERRORS
from bot.discord_app.speaker import NO_PINGS, Speaker
from bot.services import Services, open_services

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.summon", "cogs.chat", "cogs.feedback", "cogs.memory", "cogs.admin")
GENERIC_ERROR = "Sorry, something went wrong with that command. It has been logged for the admins."


def bot_intents() -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True  # characters talk in DMs too
    intents.message_content = True  # privileged: enable it in the developer portal
    return intents


class CharacterBot(commands.Bot):
    def __init__(
        self,
        config: Config,
        *,
        services: Services | None = None,
        connect_services: bool = True,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=bot_intents(),
            allowed_mentions=NO_PINGS,
            help_command=None,
        )
        self.config = config
        self.services = services
        self._owns_services = services is None and connect_services
        self.speaker = Speaker(self)
        self.tree.on_error = self.on_tree_error

    async def setup_hook(self) -> None:
        if self.services is None and self._owns_services:
            self.services = await open_services(self.config)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        log.info("Loaded %s", ", ".join(EXTENSIONS))

    async def on_ready(self) -> None:
        log.info("Logged in as %s in %d servers", self.user, len(self.guilds))

    async def on_message(self, message: discord.Message) -> None:
        """No text commands: the chat cog's listener handles messages."""

    async def on_tree_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """One place for slash-command errors: a sentence for the user, the traceback for logs."""
        original = getattr(error, "original", error)
        if isinstance(error, app_commands.CheckFailure):
            message = str(error) or "You can't use this command here."
        elif isinstance(original, STORE_ERRORS):
            command = interaction.command.qualified_name if interaction.command else "?"
            log.warning("Command /%s: Redis unavailable: %r", command, original)
            message = MEMORY_DOWN
        else:
            command = interaction.command.qualified_name if interaction.command else "?"
            log.error("Command /%s failed", command, exc_info=error)
            message = GENERIC_ERROR
        try:
            if interaction.response.is_done():
                await interaction.followup.send(message, ephemeral=True)
            else:
                await interaction.response.send_message(message, ephemeral=True)
        except discord.HTTPException as exc:  # e.g. the 3-second deadline has passed
            log.error("Could not tell the user about the failed command: %s", exc)

    async def close(self) -> None:
        # Cogs finish or cancel their in-flight replies when unloaded, before Redis closes.
        for extension in list(self.extensions):
            await self.unload_extension(extension)
        if self.services is not None and self._owns_services:
            await self.services.close()
        await super().close()


async def run_bot(config: Config) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    token = config.discord_token
    if not token:
        raise ConfigError("DISCORD_TOKEN is not set (environment or .env)")
    bot = CharacterBot(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
    async with bot:
        try:
            await bot.start(token)
        except discord.LoginFailure:
            raise ConfigError("Discord refused the token: check DISCORD_TOKEN") from None
        except discord.PrivilegedIntentsRequired:
            raise ConfigError(
                "Enable the Message Content intent for this bot in the Discord developer portal"
            ) from None


async def sync_commands(config: Config, guild_id: int | None) -> int:
    """Register the slash commands with Discord (globally, or instantly in one test server)."""
    token = config.discord_token
    if not token:
        raise ConfigError("DISCORD_TOKEN is not set (environment or .env)")
    bot = CharacterBot(config, connect_services=False)
    async with bot:
        await bot.login(token)
        guild = discord.Object(id=guild_id) if guild_id else None
        if guild:
            bot.tree.copy_global_to(guild=guild)
        commands_synced = await bot.tree.sync(guild=guild)
    return len(commands_synced)

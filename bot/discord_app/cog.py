"""The base of every cog: cogs translate Discord events into calls on the bot's services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from discord.ext import commands

if TYPE_CHECKING:
    from bot.discord_app.client import CharacterBot
    from bot.services import Services


class ServicesCog(commands.Cog):
    def __init__(self, bot: CharacterBot) -> None:
        self.bot = bot

    @property
    def services(self) -> Services:
        return self.bot.services

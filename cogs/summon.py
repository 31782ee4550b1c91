"""/summon, /dismiss and /characters: who is in the channel."""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from bot.characters import UnknownCharacter
from bot.discord_app.autocomplete import character_choices
from bot.discord_app.client import CharacterBot
from bot.discord_app.cog import ServicesCog
from bot.discord_app.speaker import SendFailed
from bot.postprocess import DISCORD_MESSAGE_LIMIT

log = logging.getLogger(__name__)


class Summon(ServicesCog):
    async def all_characters(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return character_choices(self.services.registry, current)

    async def present_characters(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        present = await self.services.presence.present(interaction.channel_id)
        return character_choices(self.services.registry, current, among=set(present))

    @app_commands.command(name="summon", description="Bring a character into this channel")
    @app_commands.describe(character="Who to summon (start typing a name)")
    @app_commands.autocomplete(character=all_characters)
    async def summon(self, interaction: discord.Interaction, character: str) -> None:
        try:
            chosen = self.services.registry.get(character)
        except UnknownCharacter as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        channel = interaction.channel
        if not await self.services.presence.summon(channel.id, chosen.id):
            await interaction.response.send_message(
                f"{chosen.name} is already here. Mention them or reply to them to talk.",
                ephemeral=True,
            )
            return
        if interaction.guild is None:
            how = f"{chosen.name} joins this chat; they answer everything you write here."
        else:
            how = (
                f"{chosen.name} joins the channel. Talk with `@{chosen.id} ...`, "
                "by mentioning me, or by replying to them."
            )
        await interaction.response.send_message(how, ephemeral=True)
        try:
            messages = await self.bot.speaker.send(channel, chosen, chosen.greeting)
        except SendFailed as exc:
            messages = exc.sent
            log.error("Greeting of %s in %s not posted: %s", chosen.id, channel.id, exc)
            if not messages:
                await interaction.followup.send(
                    f"{chosen.name} is here, but their greeting could not be posted "
                    "(Discord refused it). They will answer when you talk to them.",
                    ephemeral=True,
                )
                return
        # Remembered only once it was shown: memory and channel agree.
        await self.services.chat.greet(channel.id, chosen)
        await self.services.presence.spoke(channel.id, chosen.id, [m.id for m in messages])

    @app_commands.command(name="dismiss", description="Send a character (or everyone) away")
    @app_commands.describe(character="Who to dismiss; leave empty to dismiss everyone here")
    @app_commands.autocomplete(character=present_characters)
    async def dismiss(self, interaction: discord.Interaction, character: str | None = None) -> None:
        channel_id = interaction.channel_id
        present = await self.services.presence.present(channel_id)
        if character is None:
            targets = present
        else:
            try:
                targets = [self.services.registry.get(character).id]
            except UnknownCharacter as exc:
                await interaction.response.send_message(str(exc), ephemeral=True)
                return
        gone = [c for c in targets if await self.services.presence.dismiss(channel_id, c)]
        if gone:
            names = ", ".join(self.services.registry.get(c).name for c in gone)
            await interaction.response.send_message(f"{names} left the channel.")
        elif character is None:
            await interaction.response.send_message(
                "Nobody is here to dismiss. `/summon` someone first.", ephemeral=True
            )
        else:
            name = self.services.registry.get(character).name
            await interaction.response.send_message(
                f"{name} isn't in this channel.", ephemeral=True
            )

    @app_commands.command(name="characters", description="List the characters you can summon")
    async def characters(self, interaction: discord.Interaction) -> None:
        present = set(await self.services.presence.present(interaction.channel_id))
        lines = []
        for c in self.services.registry:
            here = " (here)" if c.id in present else ""
            lines.append(
                f"**{c.name}** (`{c.id}`){here}: {c.description.split('. ')[0].rstrip('.')}."
            )
        text = "\n".join(lines)[:DISCORD_MESSAGE_LIMIT]
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: CharacterBot) -> None:
    await bot.add_cog(Summon(bot))

"""/forget and /history: the channel's memory."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.discord_app.client import CharacterBot
from bot.discord_app.cog import ServicesCog
from bot.history import Turn
from bot.postprocess import DISCORD_MESSAGE_LIMIT

HISTORY_SHOWN = 20


def history_line(turn: Turn) -> str:
    """Characters in bold with a mask, people plain with a bust: a member nicknamed "Goku" (or
    "**Goku**") cannot pass for the character."""
    content = discord.utils.escape_markdown(turn.content)
    if turn.role == "character":
        return f"🎭 **{discord.utils.escape_markdown(turn.author)}**: {content}"
    return f"👤 {discord.utils.escape_markdown(turn.author)}: {content}"


class ConfirmForget(discord.ui.View):
    """Two buttons; only the person who asked can press them."""

    def __init__(self, requester_id: int) -> None:
        super().__init__(timeout=60)
        self.requester_id = requester_id
        self.confirmed: bool | None = None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.requester_id:
            await interaction.response.send_message("This isn't your question.", ephemeral=True)
            return False
        return True

    @discord.ui.button(label="Forget everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.confirmed = True
        bot: CharacterBot = interaction.client  # type: ignore[assignment]
        removed = await bot.services.chat.forget(interaction.channel_id)
        # Votes and kept answers made here go too (they hold the conversation's prompts).
        records = await bot.services.feedback.forget_channel(interaction.channel_id)
        await interaction.response.edit_message(
            content=f"Done: this channel's memory is empty ({removed} turns forgotten, "
            f"{records} votes and answer choices removed).",
            view=None,
        )
        self.stop()

    @discord.ui.button(label="Keep", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.confirmed = False
        await interaction.response.edit_message(content="Nothing was forgotten.", view=None)
        self.stop()


class Memory(ServicesCog):
    @app_commands.command(name="forget", description="Clear what the characters remember here")
    async def forget(self, interaction: discord.Interaction) -> None:
        count = await self.services.chat.remembered_count(interaction.channel_id)
        records = await self.services.feedback.remembered_records(interaction.channel_id)
        if not count and not records:
            await interaction.response.send_message("There is nothing to forget.", ephemeral=True)
            return
        await interaction.response.send_message(
            f"Forget the {count} remembered turns of this channel, and the {records} votes and "
            "answer choices made here? This cannot be undone.",
            view=ConfirmForget(interaction.user.id),
            ephemeral=True,
        )

    @app_commands.command(name="history", description="Show what the characters remember here")
    async def history(self, interaction: discord.Interaction) -> None:
        turns = await self.services.chat.remembered(interaction.channel_id)
        if not turns:
            await interaction.response.send_message("Nothing is remembered here.", ephemeral=True)
            return
        shown = turns[-HISTORY_SHOWN:]
        lines = [history_line(t) for t in shown]
        header = f"{len(turns)} turns remembered; the newest {len(shown)}:\n"
        text = header + "\n".join(lines)
        while len(text) > DISCORD_MESSAGE_LIMIT and len(lines) > 1:  # the newest that fit
            lines.pop(0)
            text = header + "\n".join(lines)
        await interaction.response.send_message(
            text[:DISCORD_MESSAGE_LIMIT],
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: CharacterBot) -> None:
    await bot.add_cog(Memory(bot))

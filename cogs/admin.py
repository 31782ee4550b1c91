"""/reload-adapter and /status: for server admins."""

from __future__ import annotations

import time

import discord
from discord import app_commands

from bot.characters import UnknownCharacter
from bot.discord_app.autocomplete import character_choices
from bot.discord_app.client import CharacterBot
from bot.discord_app.cog import ServicesCog
from bot.engine import AdapterError
from bot.postprocess import DISCORD_MESSAGE_LIMIT


class Admin(ServicesCog):
    def __init__(self, bot: CharacterBot) -> None:
        super().__init__(bot)
        self.started = time.monotonic()

    async def all_characters(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return character_choices(self.services.registry, current)

    # default_permissions hides the command from non-admins, but servers can override it,
    # so has_permissions checks again when it runs.
    @app_commands.command(
        name="reload-adapter", description="Load a character's newly trained adapter, live"
    )
    @app_commands.describe(character="Whose adapter to reload from its folder")
    @app_commands.autocomplete(character=all_characters)
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def reload_adapter(self, interaction: discord.Interaction, character: str) -> None:
        services = self.services
        try:
            chosen = services.registry.get(character)
        except UnknownCharacter as exc:
            await interaction.response.send_message(str(exc), ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        started = time.perf_counter()
        try:
            path = await services.reload_adapter(chosen)
        except AdapterError as exc:
            await interaction.followup.send(
                f"The new adapter for {chosen.name} was refused: {exc}. {self._serving(chosen.id)}",
                ephemeral=True,
            )
            return
        took = time.perf_counter() - started
        await interaction.followup.send(
            f"{chosen.name} now speaks with the adapter from `{path.name}/` "
            f"(loaded in {took:.1f} s, no restart).",
            ephemeral=True,
        )

    def _serving(self, character_id: str) -> str:
        if character_id in self.services.engine.adapters:
            return "The previous adapter keeps serving."
        return "The character keeps answering with the base model."

    @app_commands.command(name="status", description="Model, adapters, queue and Redis health")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def status(self, interaction: discord.Interaction) -> None:
        # Answers within Discord's 3-second deadline: Redis gets half a second to PING.
        status = await self.services.status(redis_timeout=0.5)
        uptime = int(time.monotonic() - self.started)
        redis = "ok" if status.redis_ok else f"NOT reachable ({status.redis_error or 'no answer'})"
        if status.redis_restarts:
            redis += f", restarted {status.redis_restarts}x"
        lines = [
            f"**Model**: {status.model} on {status.device}, quantization {status.quantization}",
            f"**Adapters loaded**: {', '.join(status.adapters) or 'none'}",
            *(
                f"**Adapter refused**: {cid} answers with the base model: {why}"
                for cid, why in sorted(status.adapter_failures.items())
            ),
            f"**Characters**: {status.characters}",
            f"**Queue**: {status.queue_depth} waiting, {status.batches_run} batches run",
            f"**Redis**: {redis} ({status.redis_description})",
            f"**Uptime**: {uptime // 3600}h {uptime % 3600 // 60}m",
        ]
        text = "\n".join(lines)
        if len(text) > DISCORD_MESSAGE_LIMIT:
            text = text[: DISCORD_MESSAGE_LIMIT - 1] + "…"
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: CharacterBot) -> None:
    await bot.add_cog(Admin(bot))

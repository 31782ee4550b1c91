"""/reload-adapter and /status: for server admins."""

from __future__ import annotations

import time

import discord
from discord import app_commands

from bot.characters import UnknownCharacter
from bot.discord_app.autocomplete import character_choices
from bot.discord_app.client import CharacterBot
from bot.discord_app.cog import ServicesCog
from bot.generation import ReloadOutcome
from bot.postprocess import DISCORD_MESSAGE_LIMIT
from bot.services import ServiceStatus


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
        outcomes = await services.reload_adapter(chosen)
        took = time.perf_counter() - started
        await interaction.followup.send(reload_report(chosen.name, outcomes, took), ephemeral=True)

    @app_commands.command(name="status", description="Model, adapters, queue and Redis health")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def status(self, interaction: discord.Interaction) -> None:
        # Answers within Discord's 3-second deadline: Redis gets half a second to PING.
        status = await self.services.status(redis_timeout=0.5)
        uptime = int(time.monotonic() - self.started)
        lines = [*status_lines(status), f"**Uptime**: {uptime // 3600}h {uptime % 3600 // 60}m"]
        text = "\n".join(lines)
        if len(text) > DISCORD_MESSAGE_LIMIT:
            text = text[: DISCORD_MESSAGE_LIMIT - 1] + "…"
        await interaction.response.send_message(text, ephemeral=True)


def reload_report(name: str, outcomes: list[ReloadOutcome], seconds: float) -> str:
    """One line per place that serves the model: what it loaded, or why it refused."""
    if len(outcomes) == 1:
        [outcome] = outcomes
        if outcome.ok:
            return (
                f"{name} now speaks with the adapter from `{outcome.detail}` "
                f"(loaded in {seconds:.1f} s, no restart)."
            )
        return f"The new adapter for {name} was refused: {outcome.detail}."
    loaded = sum(o.ok for o in outcomes)
    lines = [f"Reloading {name}'s adapter: {loaded} of {len(outcomes)} loaded in {seconds:.1f} s."]
    for o in outcomes:
        lines.append(
            f"- {o.where}: " + (f"loaded `{o.detail}`" if o.ok else f"refused: {o.detail}")
        )
    return "\n".join(lines)


def status_lines(status: ServiceStatus) -> list[str]:
    backend = status.backend
    redis = "ok" if status.redis_ok else f"NOT reachable ({status.redis_error or 'no answer'})"
    if status.redis_restarts:
        redis += f", restarted {status.redis_restarts}x"
    where = (
        backend.model  # a server: its address and the models it lists
        if backend.mode == "openai"
        else f"{backend.model} on {backend.device}, quantization {backend.quantization}"
    )
    lines = [
        f"**Model** ({backend.mode}): {where}",
        f"**Adapters loaded**: {', '.join(backend.adapters) or 'none'}",
        *(
            f"**Adapter refused**: {cid} answers with the base model: {why}"
            for cid, why in sorted(backend.adapter_failures.items())
        ),
    ]
    if backend.problem:
        lines.append(f"**Not answering**: {backend.problem}")
    for worker in backend.workers:
        lines.append(
            f"**Worker** {worker.name}: {worker.model} on {worker.device}, "
            f"{len(worker.adapters)} adapters, {worker.batches} batches, "
            f"{worker.queue} in its queue, seen {worker.age:.0f} s ago"
        )
    oldest = backend.oldest_pending_age
    waiting = f", oldest waiting {oldest:.1f} s" if oldest is not None else ""
    queue = (
        f"{backend.queue_depth} replies in progress, {backend.batches_run} answered"
        if backend.mode == "openai"
        else f"{backend.queue_depth} waiting{waiting}, {backend.batches_run} batches run"
    )
    lines += [
        f"**Characters**: {status.characters}",
        f"**Queue**: {queue}",
        f"**Redis**: {redis} ({status.redis_description})",
    ]
    return lines


async def setup(bot: CharacterBot) -> None:
    await bot.add_cog(Admin(bot))

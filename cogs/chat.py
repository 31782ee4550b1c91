"""Characters answer messages: mentions, `@name` in text, and replies to their messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import discord
from discord.ext import commands

from bot.characters import Character
from bot.discord_app.client import CharacterBot
from bot.discord_app.limits import ChannelQueue, Cooldown
from bot.discord_app.speaker import NO_PINGS, LiveReply
from bot.routing import route_message

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 20


class Chat(commands.Cog):
    def __init__(self, bot: CharacterBot) -> None:
        self.bot = bot
        settings = bot.config.discord
        self.cooldown = Cooldown(settings.user_cooldown_seconds)
        self.queue = ChannelQueue(settings.channel_queue_limit)
        self._in_flight: set[asyncio.Task] = set()

    async def cog_unload(self) -> None:
        """Let replies in progress finish (briefly), then cancel the rest."""
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()

    def _text_of(self, message: discord.Message) -> str:
        """The message as the model should read it: mentions as names, the bot's mention gone."""
        me = message.guild.me
        return message.clean_content.replace(f"@{me.display_name}", "").strip()

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id or message.guild is None:
            return
        services = self.bot.services
        channel_id = message.channel.id
        mentions_bot = self.bot.user in message.mentions
        reference = message.reference.message_id if message.reference else None
        state = await services.presence.channel_state(channel_id, reference)
        if not (mentions_bot or state.replied_to or state.present):
            return  # nobody here to answer: stay out of ordinary conversation
        text = self._text_of(message)
        route = route_message(
            text,
            registry=services.registry,
            present=state.present,
            mentions_bot=mentions_bot,
            reply_to_character=state.replied_to,
            last_speaker=state.last_speaker,
        )
        if route.character is None:
            if route.hint:
                await self._notice(message, route.hint)
            return
        character = route.character
        wait = self.cooldown.retry_after(message.author.id)
        if wait:
            await self._notice(
                message,
                f"{character.name} is still catching their breath. "
                f"Try again in {math.ceil(wait)} s.",
            )
            return
        if not self.queue.enter(channel_id):
            await self._notice(
                message,
                f"{character.name} has a lot of people to answer here right now. "
                "Ask again in a moment!",
            )
            return
        task = asyncio.current_task()
        self._in_flight.add(task)
        try:
            await self._answer(message, character, text or f"Hey {character.name}!")
        finally:
            self.queue.leave(channel_id)
            self._in_flight.discard(task)

    async def _notice(self, message: discord.Message, text: str) -> None:
        await message.reply(text, allowed_mentions=NO_PINGS, mention_author=False)

    async def _answer(self, message: discord.Message, character: Character, text: str) -> None:
        services = self.bot.services
        channel = message.channel
        author = message.author.display_name
        live = None
        if self.bot.config.discord.streaming:
            live = LiveReply(
                self.bot.speaker,
                channel,
                character,
                preview=lambda raw: services.chat.clean(character, raw, authors=[author]),
                interval=self.bot.config.discord.stream_interval,
            )
        try:
            async with channel.typing():
                reply = await services.chat.reply(
                    channel.id,
                    character,
                    author=author,
                    content=text,
                    on_text=live.feed if live else None,
                )
        except Exception:
            log.exception("Reply of %s in channel %s failed", character.id, channel.id)
            if live:
                await live.cancel()
            await self._notice(
                message, f"{character.name} lost their train of thought. (The error was logged.)"
            )
            return
        except asyncio.CancelledError:
            if live:
                with contextlib.suppress(Exception):
                    await live.cancel()
            raise
        if live:
            sent = await live.finish(reply.text)
        else:
            sent = await self.bot.speaker.send(channel, character, reply.text)
        await services.presence.spoke(channel.id, character.id, [m.id for m in sent])


async def setup(bot: CharacterBot) -> None:
    await bot.add_cog(Chat(bot))

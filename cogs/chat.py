"""Characters answer messages: mentions, `@name` in text, replies to their messages, and DMs.

Every message meant for a character gets the character's reply or one clear notice (at most one
per user per notice window, so spam is not answered with spam); history and presence are
written only for what was actually posted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Hashable

import discord
from discord.ext import commands

from bot.characters import Character
from bot.discord_app.buttons import reply_view
from bot.discord_app.client import CharacterBot
from bot.discord_app.cog import ServicesCog
from bot.discord_app.limits import ChannelQueue, Cooldown, NoticeThrottle
from bot.discord_app.notices import MEMORY_DOWN, STORE_ERRORS
from bot.discord_app.speaker import (
    DELIVERY_ERRORS,
    NO_PINGS,
    LiveReply,
    SendFailed,
    describe,
)
from bot.generation import BackendUnavailable
from bot.routing import addressed_by_text, route_message

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 20
NOTICE_INTERVAL_SECONDS = 10.0  # at least this long between two notices to one user


@contextlib.asynccontextmanager
async def typing_indicator(channel: discord.abc.Messageable) -> AsyncIterator[None]:
    """Discord's typing indicator, best effort: failing to show it must not stop the reply."""
    typing = channel.typing()
    try:
        await typing.__aenter__()
    except discord.HTTPException as exc:
        log.debug("Typing indicator refused in %s: %s", getattr(channel, "id", "?"), exc)
        yield
        return
    try:
        yield
    finally:
        await typing.__aexit__(None, None, None)


class Chat(ServicesCog):
    def __init__(self, bot: CharacterBot) -> None:
        super().__init__(bot)
        settings = bot.config.discord
        self.cooldown = Cooldown(settings.user_cooldown_seconds)
        self.queue = ChannelQueue(settings.channel_queue_limit)
        self.notices = NoticeThrottle(max(settings.user_cooldown_seconds, NOTICE_INTERVAL_SECONDS))
        self._in_flight: set[asyncio.Task] = set()

    async def cog_unload(self) -> None:
        """Let replies in progress finish (briefly), then cancel the rest."""
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()

    def _text_of(self, message: discord.Message) -> str:
        """The message as the model should read it: mentions as names, the bot's mention gone."""
        me = message.guild.me if message.guild else self.bot.user
        return message.clean_content.replace(f"@{me.display_name}", "").strip()

    def _replies_to_us(self, message: discord.Message) -> bool:
        resolved = message.reference.resolved if message.reference else None
        return isinstance(resolved, discord.Message) and bool(
            resolved.webhook_id or resolved.author == self.bot.user
        )

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id:
            return
        services = self.services
        in_dm = message.guild is None
        channel_id = message.channel.id
        # In a DM every message is for the bot, as if it mentioned it.
        mentions_bot = in_dm or self.bot.user in message.mentions
        reference = message.reference.message_id if message.reference else None
        text = self._text_of(message)
        try:
            state = await services.presence.channel_state(channel_id, reference)
        except STORE_ERRORS as exc:
            log.warning("Redis unavailable, message in %s not answered: %r", channel_id, exc)
            # Only speak up for messages meant for a character, not all channel chatter.
            if (
                mentions_bot
                or self._replies_to_us(message)
                or any(addressed_by_text(text, c) for c in services.registry)
            ):
                await self._notice(message, MEMORY_DOWN, key=("memory", message.author.id))
            return
        present = state.present or ([self.bot.config.default_character] if in_dm else [])
        if not (mentions_bot or state.replied_to or present):
            return  # nobody here to answer: stay out of ordinary conversation
        route = route_message(
            text,
            registry=services.registry,
            present=present,
            mentions_bot=mentions_bot,
            reply_to_character=state.replied_to,
            last_speaker=state.last_speaker,
            suggest=self.bot.config.default_character,
        )
        if route.character is None:
            if route.hint:
                await self._notice(message, route.hint, key=("hint", message.author.id))
            return
        character = route.character
        wait = self.cooldown.retry_after(message.author.id)
        if wait:
            await self._notice(
                message,
                f"{character.name} is still catching their breath. "
                f"Try again in {math.ceil(wait)} s.",
                key=("cooldown", message.author.id),
            )
            return
        if not self.queue.enter(channel_id):
            # Refused for the channel's sake, not the user's: their cooldown is not used up.
            await self._notice(
                message,
                f"{character.name} has a lot of people to answer here right now. "
                "Ask again in a moment!",
                key=("busy", message.author.id),
            )
            return
        self.cooldown.start(message.author.id)
        task = asyncio.current_task()
        self._in_flight.add(task)
        try:
            await self._answer(message, character, text or f"Hey {character.name}!")
        finally:
            self.queue.leave(channel_id)
            self._in_flight.discard(task)

    async def _notice(
        self, message: discord.Message, text: str, *, key: Hashable | None = None
    ) -> bool:
        """Tell the author something as the bot (once per `key` per notice window); False if it
        was throttled or Discord refused it (then it is logged)."""
        if key is not None and not self.notices.allow(key):
            log.debug("Notice to %s throttled: %s", message.author.id, text)
            return False
        try:
            await message.reply(text, allowed_mentions=NO_PINGS, mention_author=False)
        except DELIVERY_ERRORS as exc:
            # The message may be gone (10008) or replies refused: try without the reference.
            try:
                await message.channel.send(text, allowed_mentions=NO_PINGS)
            except DELIVERY_ERRORS:
                log.error("Notice could not be posted in %s: %s", message.channel.id, describe(exc))
                return False
        return True

    async def _answer(self, message: discord.Message, character: Character, text: str) -> None:
        services = self.services
        speaker = self.bot.speaker
        channel = message.channel
        live = None
        # Several candidates: the winner is known only at the end, so typing, then the reply.
        if self.bot.config.discord.streaming and services.chat.streams:
            live = LiveReply(
                speaker,
                channel,
                character,
                preview=lambda raw: services.chat.preview(
                    character, raw, message=text, authors=[message.author.display_name]
                ),
                interval=self.bot.config.discord.stream_interval,
            )
        try:
            async with typing_indicator(channel):
                reply = await services.chat.answer(
                    channel.id,
                    character,
                    author=message.author.display_name,
                    content=text,
                    on_text=live.feed if live else None,
                )
        except asyncio.CancelledError:
            if live:
                with contextlib.suppress(Exception):
                    await live.cancel()
            raise
        except STORE_ERRORS as exc:
            log.warning(
                "Redis unavailable, reply of %s in %s dropped: %r", character.id, channel.id, exc
            )
            await self._failed(message, live, MEMORY_DOWN)
            return
        except BackendUnavailable as exc:
            log.warning("No reply of %s in %s: %s", character.id, channel.id, exc)
            await self._failed(message, live, str(exc))
            return
        except Exception:
            log.exception("Reply of %s in channel %s failed", character.id, channel.id)
            await self._failed(
                message,
                live,
                f"{character.name} lost their train of thought. (The error was logged.)",
            )
            return

        chunks = speaker.chunks(channel, character, reply.text)
        # The buttons go on the reply's last message. A reply split over several messages gets
        # the votes only: an alternative replaces the text of one message, so it must fit one.
        state_id = view = None
        if self.bot.config.discord.buttons:
            state_id = services.feedback.new_state_id()
            view = reply_view(state_id, swipeable=len(chunks) == 1)
        try:
            sent = await (
                live.finish(reply.text, view=view)
                if live
                else speaker.send(channel, character, reply.text, view=view)
            )
        except SendFailed as exc:
            sent = exc.sent
            log.error("Reply of %s in %s not (fully) posted: %s", character.id, channel.id, exc)
            if not sent:
                # Nothing was shown, so nothing is remembered; say so if Discord lets us.
                await self._notice(
                    message,
                    f"{character.name}'s answer could not be posted here. Please try again.",
                )
                return
        # Memory holds what the channel shows: the chunks that were posted.
        shown = reply.text if len(sent) >= len(chunks) else "\n".join(chunks[: len(sent)])
        try:
            if state_id is not None and len(sent) >= len(chunks):
                # The buttons are shown: remember the exchange with what they need.
                await services.feedback.posted(
                    state_id,
                    channel.id,
                    reply,
                    shown=shown,
                    message_id=sent[-1].id,
                    webhook_id=sent[-1].webhook_id,
                    swipeable=len(chunks) == 1,
                )
            else:
                await services.chat.remember(channel.id, reply, shown)
            await services.presence.spoke(channel.id, character.id, [m.id for m in sent])
        except STORE_ERRORS as exc:
            log.error(
                "Reply of %s in %s was posted but not remembered (Redis unavailable): %r",
                character.id,
                channel.id,
                exc,
            )

    async def _failed(self, message: discord.Message, live: LiveReply | None, notice: str) -> None:
        """Generation failed: a half-streamed message becomes the notice, else post the notice."""
        if live and await live.cancel(notice):
            return
        await self._notice(message, notice)


async def setup(bot: CharacterBot) -> None:
    await bot.add_cog(Chat(bot))

"""Posting as a character: one cached webhook per channel, with the character's name and avatar.

Without the Manage Webhooks permission the bot posts itself, prefixed with the bold name. Every
message goes out with `AllowedMentions.none()`: model output must never ping anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable

import discord

from bot.characters import Character
from bot.postprocess import DISCORD_MESSAGE_LIMIT, split_message

log = logging.getLogger(__name__)

WEBHOOK_NAME = "Character bot"
NO_PINGS = discord.AllowedMentions.none()
BANNED_IN_NAMES = re.compile(r"discord|clyde", re.IGNORECASE)
Channel = discord.TextChannel | discord.Thread


def webhook_username(name: str) -> str:
    """A name Discord accepts for a webhook message: 1-80 characters, no "discord"/"clyde"."""
    # A zero-width space inside the banned words keeps them readable but acceptable.
    name = BANNED_IN_NAMES.sub(lambda m: m[0][:-3] + "\u200b" + m[0][-3:], name).strip()
    if name.lower() in {"everyone", "here", ""}:
        name = f"{name or 'Character'}\u200b"
    return name[:80]


class Speaker:
    def __init__(self, client: discord.Client) -> None:
        self.client = client
        self._webhooks: dict[int, discord.Webhook] = {}  # parent channel id -> webhook

    @staticmethod
    def _parent(channel: Channel) -> discord.TextChannel:
        return channel.parent if isinstance(channel, discord.Thread) else channel

    def can_use_webhooks(self, channel: Channel) -> bool:
        parent = self._parent(channel)
        return isinstance(parent, discord.TextChannel) and (
            parent.permissions_for(parent.guild.me).manage_webhooks
        )

    async def _webhook(
        self, parent: discord.TextChannel, *, fresh: bool = False
    ) -> discord.Webhook:
        if not fresh and parent.id in self._webhooks:
            return self._webhooks[parent.id]
        webhook = None
        if not fresh:
            # Reuse ours from an earlier run instead of piling up webhooks (Discord allows 15).
            for existing in await parent.webhooks():
                if existing.user == self.client.user and existing.token:
                    webhook = existing
                    break
        if webhook is None:
            webhook = await parent.create_webhook(name=WEBHOOK_NAME, reason="Character replies")
        self._webhooks[parent.id] = webhook
        return webhook

    async def _via_webhook(
        self, channel: Channel, character: Character, content: str
    ) -> discord.Message:
        parent = self._parent(channel)
        kwargs = {
            "username": webhook_username(character.name),
            "avatar_url": character.avatar_url,
            "allowed_mentions": NO_PINGS,
            "wait": True,
        }
        if isinstance(channel, discord.Thread):
            kwargs["thread"] = channel
        webhook = await self._webhook(parent)
        try:
            return await webhook.send(content, **kwargs)
        except discord.NotFound:
            # Someone deleted the webhook in Discord: make a new one, once.
            log.info("Webhook for #%s is gone; creating a new one", parent.name)
            webhook = await self._webhook(parent, fresh=True)
            return await webhook.send(content, **kwargs)

    def limit_for(self, channel: Channel, character: Character) -> int:
        """Characters per message: the bold-name prefix of bot messages takes some."""
        if self.can_use_webhooks(channel):
            return DISCORD_MESSAGE_LIMIT
        return DISCORD_MESSAGE_LIMIT - len(self._label(character))

    @staticmethod
    def _label(character: Character) -> str:
        return f"**{character.name}**: "

    async def send_one(
        self, channel: Channel, character: Character, content: str
    ) -> discord.Message:
        if self.can_use_webhooks(channel):
            try:
                return await self._via_webhook(channel, character, content)
            except discord.Forbidden:
                log.warning("Webhook refused in #%s; posting as the bot", self._parent(channel))
        return await channel.send(self._label(character) + content, allowed_mentions=NO_PINGS)

    async def send(
        self, channel: Channel, character: Character, text: str
    ) -> list[discord.Message]:
        """Post `text` as the character, split for Discord's limit."""
        chunks = split_message(text, self.limit_for(channel, character))
        return [await self.send_one(channel, character, chunk) for chunk in chunks]

    async def edit(self, message: discord.Message, character: Character, content: str) -> None:
        if isinstance(message, discord.WebhookMessage):
            await message.edit(content=content, allowed_mentions=NO_PINGS)
        else:
            await message.edit(content=self._label(character) + content, allowed_mentions=NO_PINGS)


class LiveReply:
    """Shows a reply while it is generated: posts at the first text, then edits at most once per
    `interval` seconds; `finish` puts the final text in place (and posts any overflow)."""

    def __init__(
        self,
        speaker: Speaker,
        channel: Channel,
        character: Character,
        preview: Callable[[str], str],
        interval: float,
    ) -> None:
        self.speaker = speaker
        self.channel = channel
        self.character = character
        self.preview = preview
        self.interval = interval
        self.edits = 0
        self._loop = asyncio.get_running_loop()
        self._raw = ""
        self._shown = ""
        self._message: discord.Message | None = None
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="live-reply")

    def feed(self, piece: str) -> None:
        """Called from the engine thread with each new piece of text."""
        self._loop.call_soon_threadsafe(self._append, piece)

    def _append(self, piece: str) -> None:
        self._raw += piece
        self._changed.set()

    async def _show(self, text: str) -> None:
        text = split_message(text, self.speaker.limit_for(self.channel, self.character))[0]
        if text == self._shown:
            return
        if self._message is None:
            self._message = await self.speaker.send_one(self.channel, self.character, text)
        else:
            await self.speaker.edit(self._message, self.character, text)
            self.edits += 1
        self._shown = text

    async def _run(self) -> None:
        while not self._done.is_set():
            await self._changed.wait()
            self._changed.clear()
            if self._done.is_set():
                break
            text = self.preview(self._raw)
            if text:
                await self._show(text + " …")
                # Sleep the interval, but wake early when the reply is finished.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._done.wait(), self.interval)

    async def finish(self, text: str) -> list[discord.Message]:
        """Stop streaming and show the final text; returns every message of the reply."""
        self._done.set()
        self._changed.set()
        await self._task  # lets an in-flight post/edit complete, so nothing is sent twice
        chunks = split_message(text, self.speaker.limit_for(self.channel, self.character))
        if self._message is None:
            return [await self.speaker.send_one(self.channel, self.character, c) for c in chunks]
        if chunks[0] != self._shown:
            await self.speaker.edit(self._message, self.character, chunks[0])
            self.edits += 1
        rest = [await self.speaker.send_one(self.channel, self.character, c) for c in chunks[1:]]
        return [self._message, *rest]

    async def cancel(self) -> None:
        self._done.set()
        self._changed.set()
        await self._task

"""Posting as a character: one cached webhook per channel, with the character's name and avatar.

Without the Manage Webhooks permission (and in DMs) the bot posts itself, prefixed with the bold
name. Every message goes out with `AllowedMentions.none()`: model output must never ping anyone.

A reply is not lost to one failing route: cached webhook -> a fresh webhook (when Discord says
the webhook is gone) -> the bot itself -> `SendFailed`. A channel that refuses webhooks (403, or
its 15 webhooks taken) is remembered for a while, so later messages skip the failing call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections.abc import Callable, Sequence

import aiohttp
import discord

from bot.characters import Character
from bot.postprocess import DISCORD_MESSAGE_LIMIT, split_message

log = logging.getLogger(__name__)

WEBHOOK_NAME = "Character bot"
NO_PINGS = discord.AllowedMentions.none()
BANNED_IN_NAMES = re.compile(r"discord|clyde", re.IGNORECASE)
Channel = discord.TextChannel | discord.Thread | discord.DMChannel

# What a post, edit or delete can fail with once discord.py's own retries are spent.
DELIVERY_ERRORS = (discord.HTTPException, discord.RateLimited, aiohttp.ClientError, OSError)
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
WEBHOOK_LIMITS = frozenset({30007, 30058})  # max webhooks per channel / per server
WEBHOOK_RETRY_SECONDS = 600.0
MAX_REFUSING_CHANNELS = 4096


def webhook_username(name: str) -> str:
    """A name Discord accepts for a webhook message: 1-80 characters, no "discord"/"clyde"."""
    # A zero-width space inside the banned words keeps them readable but acceptable.
    name = BANNED_IN_NAMES.sub(lambda m: m[0][:-3] + "\u200b" + m[0][-3:], name).strip()
    if name.lower() in {"everyone", "here", ""}:
        name = f"{name or 'Character'}\u200b"
    return name[:80]


def describe(error: BaseException) -> str:
    """Why a call failed, for logs and `SendFailed`: status and code, never a URL or token."""
    if isinstance(error, discord.HTTPException):
        reason = f"HTTP {error.status}, code {error.code}"
        first_line = error.text.splitlines()[0][:200] if error.text else ""
        return f"{reason}: {first_line}" if first_line else reason
    if isinstance(error, discord.RateLimited):
        return f"rate limited for {error.retry_after:.0f} s"
    if isinstance(error, SendFailed):
        return str(error)
    # aiohttp's messages can hold the request URL, and a webhook URL holds its token.
    return type(error).__name__


def is_gone(error: BaseException) -> bool:
    """Discord says the message no longer exists (deleted by someone)."""
    return isinstance(error, discord.NotFound) and error.code == UNKNOWN_MESSAGE


class SendFailed(Exception):
    """Nothing, or only part, of a reply could be posted by any route.

    `sent` holds the messages posted before the failure (possibly none)."""

    def __init__(self, reason: str, sent: Sequence[discord.Message] = ()) -> None:
        super().__init__(reason)
        self.sent: list[discord.Message] = list(sent)


class Speaker:
    def __init__(self, client: discord.Client) -> None:
        self.client = client
        self.webhook_retry_seconds = WEBHOOK_RETRY_SECONDS
        self._webhooks: dict[int, discord.Webhook] = {}  # parent channel id -> webhook
        # parent channel id -> when to try webhooks again (monotonic clock), oldest first
        self._refusing: dict[int, float] = {}
        # One webhook lookup/creation per channel at a time, or concurrent replies pile up
        # webhooks; a lock lives only while someone holds it.
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    @staticmethod
    def _parent(channel: Channel) -> Channel:
        return channel.parent if isinstance(channel, discord.Thread) else channel

    def can_use_webhooks(self, channel: Channel) -> bool:
        parent = self._parent(channel)
        return (
            isinstance(parent, discord.TextChannel)
            and parent.permissions_for(parent.guild.me).manage_webhooks
            and not self._refused(parent.id)
        )

    # -- channels that refuse webhooks ---------------------------------------------------------

    def _refused(self, parent_id: int) -> bool:
        until = self._refusing.get(parent_id)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._refusing[parent_id]
        return False

    def _refuse(self, parent_id: int) -> None:
        self._refusing.pop(parent_id, None)
        while len(self._refusing) >= MAX_REFUSING_CHANNELS:
            del self._refusing[next(iter(self._refusing))]  # the oldest entry
        self._refusing[parent_id] = time.monotonic() + self.webhook_retry_seconds

    @staticmethod
    def _is_refusal(error: BaseException) -> bool:
        """Webhooks won't work here for now: not allowed, or the channel's webhooks are full."""
        return isinstance(error, discord.Forbidden) or (
            isinstance(error, discord.HTTPException) and error.code in WEBHOOK_LIMITS
        )

    # -- webhooks ------------------------------------------------------------------------------

    async def _webhook(
        self, parent: discord.TextChannel, *, stale: discord.Webhook | None = None
    ) -> discord.Webhook:
        """The channel's webhook; with `stale` (one Discord rejected), a new one."""
        lock = self._locks.get(parent.id)
        if lock is None:
            lock = self._locks[parent.id] = asyncio.Lock()
        async with lock:
            cached = self._webhooks.get(parent.id)
            if cached is not None and cached is not stale:
                return cached  # another reply already has one (or replaced the stale one)
            self._webhooks.pop(parent.id, None)
            webhook = None
            if stale is None:
                # Reuse ours from an earlier run instead of piling up webhooks (Discord allows
                # 15).
                for existing in await parent.webhooks():
                    if existing.user == self.client.user and existing.token:
                        webhook = existing
                        break
            if webhook is None:
                webhook = await parent.create_webhook(name=WEBHOOK_NAME, reason="Character replies")
            self._webhooks[parent.id] = webhook
            return webhook

    async def _via_webhook(
        self,
        channel: Channel,
        character: Character,
        content: str,
        view: discord.ui.View | None = None,
    ) -> discord.Message:
        parent = self._parent(channel)
        kwargs = {
            "username": webhook_username(character.name),
            "avatar_url": character.avatar_url,
            "allowed_mentions": NO_PINGS,
            "wait": True,
        }
        if view is not None:  # the bot's own webhooks may carry buttons (application-owned)
            kwargs["view"] = view
        if isinstance(channel, discord.Thread):
            kwargs["thread"] = channel
        webhook = await self._webhook(parent)
        try:
            return await webhook.send(content, **kwargs)
        except discord.HTTPException as error:
            if error.status != 401 and error.code != UNKNOWN_WEBHOOK:
                raise
            # Someone deleted the webhook (or reset its token) in Discord: a new one, once.
            log.warning("Webhook for #%s is gone (%s); creating a new one", parent, describe(error))
        webhook = await self._webhook(parent, stale=webhook)
        return await webhook.send(content, **kwargs)

    # -- posting -------------------------------------------------------------------------------

    def limit_for(self, channel: Channel, character: Character) -> int:
        """Characters per message. Any message may end up posted by the bot with the bold-name
        prefix (when the webhook route fails), so every chunk leaves room for it."""
        return DISCORD_MESSAGE_LIMIT - len(self._label(character))

    def chunks(self, channel: Channel, character: Character, text: str) -> list[str]:
        """`text` as the messages that show it, each within `limit_for`: the one rule for what a
        reply's parts are, so callers can tell which part of it was posted."""
        return split_message(text, self.limit_for(channel, character))

    @staticmethod
    def _label(character: Character) -> str:
        return f"**{character.name}**: "

    async def send_one(
        self,
        channel: Channel,
        character: Character,
        content: str,
        *,
        view: discord.ui.View | None = None,
    ) -> discord.Message:
        """Post one message (within `limit_for`) as the character, by the first route that
        works, with `view`'s buttons if given; raises `SendFailed` (with `sent=[]`) when none
        does."""
        webhook_failure = ""
        if self.can_use_webhooks(channel):
            try:
                return await self._via_webhook(channel, character, content, view)
            except DELIVERY_ERRORS as error:
                parent = self._parent(channel)
                webhook_failure = f"webhook: {describe(error)}; "
                if self._is_refusal(error):
                    self._refuse(parent.id)
                    log.warning(
                        "Webhooks refused in #%s (%s); posting as the bot for %.0f s",
                        parent,
                        describe(error),
                        self.webhook_retry_seconds,
                    )
                else:
                    log.warning(
                        "Webhook post failed in #%s (%s); posting as the bot",
                        parent,
                        describe(error),
                    )
        extra = {} if view is None else {"view": view}
        try:
            return await channel.send(
                self._label(character) + content, allowed_mentions=NO_PINGS, **extra
            )
        except DELIVERY_ERRORS as error:
            raise SendFailed(
                f"Could not post {character.name}'s message in channel {channel.id} "
                f"({webhook_failure}bot: {describe(error)})"
            ) from error

    async def send(
        self,
        channel: Channel,
        character: Character,
        text: str,
        *,
        view: discord.ui.View | None = None,
    ) -> list[discord.Message]:
        """Post `text` as the character, split for Discord's limit, `view`'s buttons on the last
        part. If a part fails by every route, raises `SendFailed` whose `sent` holds the parts
        posted before it."""
        chunks = self.chunks(channel, character, text)
        return await self._send_chunks(channel, character, chunks, [], view)

    async def _send_chunks(
        self,
        channel: Channel,
        character: Character,
        chunks: Sequence[str],
        sent: list[discord.Message],
        view: discord.ui.View | None = None,
    ) -> list[discord.Message]:
        """Post `chunks` after the messages already `sent` (`view` on the last); returns them
        all."""
        total = len(sent) + len(chunks)
        for i, chunk in enumerate(chunks):
            last = view if i == len(chunks) - 1 else None
            try:
                sent.append(await self.send_one(channel, character, chunk, view=last))
            except SendFailed as error:
                raise SendFailed(f"Part {len(sent) + 1} of {total}: {error}", sent) from error
        return sent

    async def edit(
        self,
        message: discord.Message,
        character: Character,
        content: str,
        *,
        view: discord.ui.View | None = None,
    ) -> None:
        """Replace a message's text (and its buttons, with `view`; without, they stay); raises
        discord.HTTPException (and network errors) on failure, e.g. NotFound code 10008 when
        someone deleted the message."""
        extra = {} if view is None else {"view": view}
        if isinstance(message, discord.WebhookMessage):
            await message.edit(content=content, allowed_mentions=NO_PINGS, **extra)
        else:
            await message.edit(
                content=self._label(character) + content, allowed_mentions=NO_PINGS, **extra
            )

    async def edit_posted(
        self,
        channel: Channel,
        message_id: int,
        webhook_id: int | None,
        character: Character,
        content: str,
        *,
        view: discord.ui.View | None = None,
    ) -> None:
        """Replace the text of a message posted earlier (maybe by an earlier run), knowing only
        its id: through the webhook `webhook_id` that posted it, else as the bot's own message
        (with the bold name). Raises SendFailed when that webhook is gone, and what `edit`
        raises."""
        extra = {} if view is None else {"view": view}
        if webhook_id is None:
            message = channel.get_partial_message(message_id)
            await message.edit(
                content=self._label(character) + content, allowed_mentions=NO_PINGS, **extra
            )
            return
        webhook = await self._webhook_by_id(self._parent(channel), webhook_id)
        if isinstance(channel, discord.Thread):
            extra["thread"] = channel
        await webhook.edit_message(message_id, content=content, allowed_mentions=NO_PINGS, **extra)

    async def _webhook_by_id(self, parent: discord.TextChannel, webhook_id: int) -> discord.Webhook:
        """The channel's webhook with that id and its token: the cached one, else looked up."""
        cached = self._webhooks.get(parent.id)
        if cached is not None and cached.id == webhook_id:
            return cached
        if not isinstance(parent, discord.TextChannel):
            raise SendFailed(f"channel {parent.id} has no webhooks to edit message with")
        for webhook in await parent.webhooks():
            if webhook.id == webhook_id and webhook.token:
                if cached is None and webhook.user == self.client.user:
                    self._webhooks[parent.id] = webhook
                return webhook
        raise SendFailed(
            f"the webhook {webhook_id} that posted the message in #{parent} is gone, so the "
            "message can no longer be edited"
        )

    async def delete(self, message: discord.Message) -> bool:
        """Delete a message the bot posted; True when it is gone (also if it already was)."""
        try:
            await message.delete()
            return True
        except DELIVERY_ERRORS as error:
            if is_gone(error):
                return True
            failure = error
        if isinstance(message, discord.WebhookMessage):
            # The webhook itself may be gone; with Manage Messages the bot can still delete.
            try:
                await discord.PartialMessage(channel=message.channel, id=message.id).delete()
                return True
            except DELIVERY_ERRORS as error:
                if is_gone(error):
                    return True
        log.warning(
            "Could not delete message %s in channel %s (%s)",
            message.id,
            message.channel.id,
            describe(failure),
        )
        return False


class LiveReply:
    """Shows a reply while it is generated: posts at the first text, then edits at most once per
    `interval` seconds; `finish` puts the final text in place (and posts any overflow).

    A failed post or edit while streaming stops the streaming, never the reply: `finish` still
    shows the final text exactly once, `cancel` leaves no half message behind."""

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
        self._message: discord.Message | None = None  # the partial being edited
        # A partial Discord called gone (404 10008). Deleted again at the end anyway: that is
        # free if it is gone, and Discord sometimes says so of a message that still shows.
        self._orphan: discord.Message | None = None
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="live-reply")

    def feed(self, text: str) -> None:
        """Called from any thread with the reply's text so far; text that starts over (a job
        retried elsewhere) replaces what is shown."""
        self._loop.call_soon_threadsafe(self._update, text)

    def _update(self, text: str) -> None:
        self._raw = text
        self._changed.set()

    def _chunks(self, text: str) -> list[str]:
        return self.speaker.chunks(self.channel, self.character, text)

    async def _show(self, text: str) -> None:
        text = self._chunks(text)[0]
        if text == self._shown:
            return
        if self._message is None:
            self._message = await self.speaker.send_one(self.channel, self.character, text)
        else:
            await self.speaker.edit(self._message, self.character, text)
            self.edits += 1
        self._shown = text

    async def _run(self) -> None:
        # Never ends in an exception: nobody may be awaiting this task when a post fails.
        try:
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
        except (SendFailed, *DELIVERY_ERRORS) as error:
            if is_gone(error):  # deleted by someone: the final text is posted afresh
                self._orphan, self._message, self._shown = self._message, None, ""
            log.warning(
                "Stopped streaming %s's reply in channel %s (%s)",
                self.character.name,
                self.channel.id,
                describe(error),
            )
        except Exception:
            log.exception("Streaming %s's reply failed", self.character.name)

    async def _stop(self) -> None:
        self._done.set()
        self._changed.set()
        await self._task  # lets an in-flight post/edit complete, so nothing is sent twice

    async def _delete_orphan(self) -> None:
        if self._orphan is not None:
            await self.speaker.delete(self._orphan)
            self._orphan = None

    async def _remove_partial(self) -> None:
        await self._delete_orphan()
        if self._message is not None:
            await self.speaker.delete(self._message)
            self._message, self._shown = None, ""

    async def finish(
        self, text: str, *, view: discord.ui.View | None = None
    ) -> list[discord.Message]:
        """Stop streaming and show the final text once, `view`'s buttons on its last message
        (the final edit, or the last part posted); returns every message of the reply.
        Raises `SendFailed` (with the parts posted) when the text could not be shown."""
        await self._stop()
        chunks = self._chunks(text)
        if not chunks:
            await self._remove_partial()
            return []
        try:
            if self._message is None:
                return await self.speaker._send_chunks(
                    self.channel, self.character, chunks, [], view
                )
            partial = self._message
            # The buttons go on the partial only when it is the whole reply.
            partial_view = view if len(chunks) == 1 else None
            if chunks[0] != self._shown or partial_view is not None:
                try:
                    await self.speaker.edit(partial, self.character, chunks[0], view=partial_view)
                    self.edits += 1
                except DELIVERY_ERRORS as error:
                    log.warning(
                        "Could not edit %s's reply in channel %s into place (%s); posting it anew",
                        self.character.name,
                        self.channel.id,
                        describe(error),
                    )
                    # Deleted below, after the fresh post: if the failed edit did land after
                    # all, that leaves no second copy; if posting fails, no half reply.
                    self._orphan, self._message, self._shown = partial, None, ""
                    return await self.speaker._send_chunks(
                        self.channel, self.character, chunks, [], view
                    )
            return await self.speaker._send_chunks(
                self.channel, self.character, chunks[1:], [partial], view
            )
        finally:
            await self._delete_orphan()

    async def cancel(self, notice: str | None = None) -> bool:
        """Generation failed: stop streaming and take down the partial message. With a
        `notice`, the partial becomes the notice instead and this returns True (the caller
        posts nothing else); False when no message shows the notice."""
        await self._stop()
        if self._message is not None and notice:
            text = (self._chunks(notice) or [notice])[0]
            try:
                await self.speaker.edit(self._message, self.character, text)
                self.edits += 1
                self._shown = text
                await self._delete_orphan()
                return True
            except DELIVERY_ERRORS as error:
                log.warning(
                    "Could not turn the partial reply in channel %s into a notice (%s)",
                    self.channel.id,
                    describe(error),
                )
        await self._remove_partial()
        return False

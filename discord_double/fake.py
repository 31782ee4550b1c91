"""Discord's servers, faked in memory, for driving the bot through discord.py's real code.

Only what cannot exist here is replaced: the HTTP client's `request` (REST calls such as sending
messages and creating webhooks) and the async webhook adapter (interaction responses, follow-ups
and webhook messages). Everything else is discord.py itself: gateway events go through the real
parsers (`GUILD_CREATE`, `MESSAGE_CREATE`, `INTERACTION_CREATE`), so option parsing,
autocomplete, checks, views and listeners run as they would against Discord. Every call the bot
makes is recorded for the tests to inspect; a route the fake does not know fails loudly.

    fake = FakeDiscord()
    await fake.login(bot)              # runs setup_hook, then the guild arrives
    await fake.slash("summon", character="goku")
    await fake.send_message("hi!", mentions_bot=True)
    fake.channel_messages(fake.channel_id)
    await fake.press(message["id"], fake.buttons(message)[0])   # a button under a message

Component presses arrive as INTERACTION_CREATE type 3 (`click` for buttons of interaction
responses, `press` for buttons of messages the bot posted, by webhook or as itself); their
answers are recorded with the other interaction responses (`interaction_responses`,
`ephemeral_messages`), the message edits they make in the message's `edits`.

Faults: `fake.fail("webhook_send", 500, 0)` makes the next webhook post fail as Discord would
(after discord.py's own retries); `fake.delete_message(id)` is a moderator deleting a message.
DMs: `fake.dm_channel_id` is the member's DM with the bot (no guild, no member payloads).
What Discord answers to each call (and the faults) is `discord_double.routes`; the JSON it sends,
`discord_double.payloads`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import discord
from discord.ext import commands
from discord.webhook.async_ import async_context

from discord_double.payloads import DiscordPayloads
from discord_double.routes import EPHEMERAL, DiscordRoutes, Fault, RecordingWebhookAdapter

# Tasks discord.py starts for one event; waiting for them means the event was fully handled.
EVENT_TASKS = (
    "discord.py:",
    "CommandTree-invoker",
    "discord-ui-view-dispatch",
    "discord-ui-dynamic-item",  # presses of persistent (DynamicItem) buttons
    "live-reply",
)
APP_OPTION_TYPES = {str: 3, int: 4, bool: 5, float: 10}


class FakeDiscord(DiscordRoutes, DiscordPayloads):
    """One server with a text channel, a thread in it, an admin and an ordinary member; the
    member also has a DM channel with the bot."""

    def __init__(
        self, *, bot_can_manage_webhooks: bool = True, bot_can_manage_messages: bool = False
    ) -> None:
        self.bot_can_manage_webhooks = bot_can_manage_webhooks
        self.bot_can_manage_messages = bot_can_manage_messages
        self._ids = itertools.count(discord.utils.time_snowflake(datetime.now(UTC)))
        self.guild_id = self.new_id()
        self.channel_id = self.new_id()
        self.thread_id = self.new_id()
        self.bot_user_id = self.new_id()
        self.application_id = self.bot_user_id  # as for every bot made in the developer portal
        self.admin_id = self.new_id()
        self.member_id = self.new_id()
        self.admin_role_id = self.new_id()
        self.bot_role_id = self.new_id()
        self.dm_channel_id = self.new_id()  # the member's DM with the bot
        self._dm_channels: dict[int, int] = {self.member_id: self.dm_channel_id}  # user -> DM
        self._extra_channels: dict[int, str] = {}  # text channels added by `add_channel`
        self._usernames: dict[int, str] = {}  # users made by `new_user`
        self._nicks: dict[int, str] = {}
        self._faults: dict[str, deque[Fault]] = {}
        self.failed_calls: list[dict] = []  # calls that `fail` made fail, in order
        self.typing_calls = 0
        self._messages: list[dict] = []  # what the bot posted, in order
        self._responses: list[dict] = []  # interaction responses and follow-ups
        self._webhooks: dict[int, dict] = {}  # id -> webhook payload (live ones)
        self._webhooks_created: list[dict] = []
        self._interactions: dict[str, dict] = {}  # token -> the interaction payload
        self.bot: commands.Bot | None = None
        self.adapter = RecordingWebhookAdapter(self)

    def new_id(self) -> int:
        return next(self._ids)

    # -- connecting the bot ------------------------------------------------------------------

    async def login(self, bot: commands.Bot) -> None:
        """Log the bot in (its `setup_hook` runs), then deliver the server as Discord would."""
        self.bot = bot
        bot.http.request = self._rest  # type: ignore[method-assign]
        async_context.set(self.adapter)
        await bot.login("fake-token")
        bot._connection.parsers["GUILD_CREATE"](self.guild_payload())
        await self.wait_idle()

    async def wait_idle(self) -> None:
        """Wait until every task started for the last event (and the tasks they started) ends."""
        current = asyncio.current_task()
        while True:
            pending = [
                t
                for t in asyncio.all_tasks()
                if t is not current and not t.done() and t.get_name().startswith(EVENT_TASKS)
            ]
            if not pending:
                return
            await asyncio.wait(pending)

    async def _dispatch(self, event: str, payload: dict) -> None:
        async_context.set(self.adapter)  # tasks created now inherit the recording adapter
        self.bot._connection.parsers[event](payload)
        await self.wait_idle()

    # -- what people do ------------------------------------------------------------------------

    async def send_message(
        self,
        content: str,
        *,
        mentions_bot: bool = False,
        reply_to: int | None = None,
        author_id: int | None = None,
        channel_id: int | None = None,
    ) -> int:
        """A person posts in the channel (or a DM); returns the message id."""
        payload = self._message_create(content, mentions_bot, reply_to, author_id, channel_id)
        if self._receives(payload):
            await self._dispatch("MESSAGE_CREATE", payload)
        return int(payload["id"])

    async def send_messages_concurrently(self, messages: Iterable[dict[str, Any]]) -> list[int]:
        """Many people post at once: each dict holds `send_message`'s keyword arguments
        (`content` included). Every MESSAGE_CREATE is delivered before any handler runs, then
        this waits until all are handled; returns the message ids in order."""
        async_context.set(self.adapter)
        ids = []
        for kwargs in messages:
            kwargs = dict(kwargs)
            payload = self._message_create(
                kwargs.pop("content"),
                kwargs.pop("mentions_bot", False),
                kwargs.pop("reply_to", None),
                kwargs.pop("author_id", None),
                kwargs.pop("channel_id", None),
            )
            assert not kwargs, f"unknown send_message arguments {sorted(kwargs)}"
            if self._receives(payload):
                self.bot._connection.parsers["MESSAGE_CREATE"](payload)
            ids.append(int(payload["id"]))
        await self.wait_idle()
        return ids

    def _receives(self, message: dict) -> bool:
        """Discord sends a message to a bot only with the intent for where it was posted."""
        intents = self.bot.intents
        return intents.guild_messages if "guild_id" in message else intents.dm_messages

    def _message_create(
        self,
        content: str,
        mentions_bot: bool,
        reply_to: int | None,
        author_id: int | None,
        channel_id: int | None,
    ) -> dict:
        channel_id = channel_id or self.channel_id
        dm_user = self._dm_user(channel_id)
        author_id = author_id or dm_user or self.member_id
        assert dm_user in (None, author_id), "only the DM's recipient writes in it"
        if mentions_bot:
            content = f"<@{self.bot_user_id}> {content}".rstrip()
        payload = {
            **self._message_base(self.new_id(), channel_id, content),
            "author": self.user_payload(author_id),
            "mentions": [self.user_payload(self.bot_user_id)] if mentions_bot else [],
            "type": 19 if reply_to else 0,
        }
        if dm_user is None:  # Discord sends the author's member only in servers
            payload["member"] = self.member_payload(author_id, with_user=False)
        if reply_to:
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(reply_to),
                "channel_id": str(channel_id),
            }
            if dm_user is None:
                payload["message_reference"]["guild_id"] = str(self.guild_id)
        return payload

    async def slash(
        self,
        name: str,
        *,
        user_id: int | None = None,
        channel_id: int | None = None,
        **options: str | int | bool | float,
    ) -> None:
        """A person runs `/name option:value ...`."""
        data = {
            "id": str(self.new_id()),
            "name": name,
            "type": 1,
            "options": [
                {"name": key, "type": APP_OPTION_TYPES[type(value)], "value": value}
                for key, value in options.items()
            ],
        }
        await self._dispatch("INTERACTION_CREATE", self._interaction(2, data, user_id, channel_id))

    async def autocomplete(
        self,
        command: str,
        option: str,
        typed: str,
        *,
        user_id: int | None = None,
        channel_id: int | None = None,
    ) -> list[dict]:
        """A person types `typed` into an option; returns the choices the bot offered."""
        data = {
            "id": str(self.new_id()),
            "name": command,
            "type": 1,
            "options": [{"name": option, "type": 3, "value": typed, "focused": True}],
        }
        await self._dispatch("INTERACTION_CREATE", self._interaction(4, data, user_id, channel_id))
        response = self._responses[-1]
        assert response["type"] == 8, response
        return response["choices"]

    async def click(self, custom_id: str, *, user_id: int | None = None) -> None:
        """A person presses a button of a message the bot sent in an interaction response."""
        for response in reversed(self._responses):
            ids = [c["custom_id"] for row in response["components"] for c in row["components"]]
            if custom_id in ids:
                break
        else:
            raise AssertionError(f"no message has a component {custom_id!r}")
        first = self._interactions[response["token"]]
        message = {
            **self._message_base(response["message_id"], int(first["channel_id"]), ""),
            "author": self.user_payload(self.bot_user_id),
            "content": response["content"] or "",
            "components": response["components"],
            "flags": EPHEMERAL if response["ephemeral"] else 0,
            "application_id": str(self.application_id),
        }
        data = {"custom_id": custom_id, "component_type": 2}
        user_id = user_id or int((first.get("member") or first)["user"]["id"])
        payload = self._interaction(3, data, user_id, int(first["channel_id"]))
        payload["message"] = message
        await self._dispatch("INTERACTION_CREATE", payload)

    async def press(
        self,
        message_id: int,
        custom_id: str,
        *,
        user_id: int | None = None,
        channel_id: int | None = None,
    ) -> None:
        """A person presses a button under a message the bot posted (by webhook or as itself),
        as it shows now. `channel_id` (default: the message's) is where Discord says the press
        came from."""
        message = self._message(message_id)
        if custom_id not in self.buttons(message):
            raise AssertionError(f"message {message_id} has no button {custom_id!r}")
        payload = {
            **self._message_base(message_id, message["channel_id"], self.visible_text(message)),
            "components": message["components"],
            "application_id": str(self.application_id),
        }
        if message["webhook_id"] is not None:
            payload["author"] = self._webhook_author(message["webhook_id"], message["username"])
            payload["webhook_id"] = str(message["webhook_id"])
        else:
            payload["author"] = self.user_payload(self.bot_user_id)
        data = {"custom_id": custom_id, "component_type": 2}
        interaction = self._interaction(3, data, user_id, channel_id or message["channel_id"])
        interaction["message"] = payload
        await self._dispatch("INTERACTION_CREATE", interaction)

    @staticmethod
    def buttons(message: dict) -> list[str]:
        """The custom ids of a message's buttons, as it shows now (disabled ones included)."""
        return [
            c["custom_id"]
            for row in message["components"]
            for c in row.get("components", [])
            if c.get("type") == 2 and "custom_id" in c
        ]

    def ephemeral_messages(self) -> list[str]:
        """What only the person who acted saw (ephemeral responses and follow-ups), in order."""
        return [r["content"] for r in self._responses if r["ephemeral"] and r["content"]]

    def expire_webhooks(self) -> None:
        """Someone deletes the bot's webhooks in the server settings."""
        self._webhooks.clear()

    def delete_message(self, message_id: int) -> None:
        """A moderator deletes a message the bot posted: later edits and deletes get 404 10008.
        (The MESSAGE_DELETE event is not delivered: the bot does not listen for it.)"""
        self._message(message_id)["deleted"] = True

    def set_nickname(self, user_id: int, nick: str | None) -> None:
        """A member's server nickname (their display name), in every later payload. The bot's
        own nickname reaches its member cache at once, as Discord's GUILD_MEMBER_UPDATE does."""
        if nick is None:
            self._nicks.pop(user_id, None)
        else:
            self._nicks[user_id] = nick
        if user_id == self.bot_user_id and self.bot is not None:
            payload = {**self.member_payload(user_id), "guild_id": str(self.guild_id)}
            self.bot._connection.parsers["GUILD_MEMBER_UPDATE"](payload)

    def new_user(self, username: str | None = None, *, nick: str | None = None) -> int:
        """Another member of the server; returns their id (any unknown id also works)."""
        user_id = self.new_id()
        self._usernames[user_id] = username or f"user{len(self._usernames) + 1}"
        if nick is not None:
            self._nicks[user_id] = nick
        return user_id

    def add_channel(self, name: str | None = None) -> int:
        """A new text channel in the server (delivered as CHANNEL_CREATE once logged in)."""
        channel_id = self.new_id()
        self._extra_channels[channel_id] = name or f"channel-{len(self._extra_channels) + 2}"
        if self.bot is not None:
            self.bot._connection.parsers["CHANNEL_CREATE"](self._channel_payload(channel_id))
        return channel_id

    def dm_channel_of(self, user_id: int) -> int:
        """The DM channel between `user_id` and the bot (made on first use)."""
        if user_id not in self._dm_channels:
            self._dm_channels[user_id] = self.new_id()
        return self._dm_channels[user_id]

    def _dm_user(self, channel_id: int) -> int | None:
        """The recipient when `channel_id` is a DM with the bot, else None."""
        for user_id, dm_id in self._dm_channels.items():
            if dm_id == channel_id:
                return user_id
        return None

    # -- what the bot did -----------------------------------------------------------------------

    def channel_messages(
        self, channel_id: int | None = None, *, include_deleted: bool = False
    ) -> list[dict]:
        """Messages the bot posted (as itself or through webhooks), oldest first; deleted ones
        (by the bot or a moderator) only with `include_deleted`."""
        return [
            m
            for m in self._messages
            if (channel_id is None or m["channel_id"] == channel_id)
            and (include_deleted or not m["deleted"])
        ]

    def interaction_responses(self) -> list[dict]:
        return list(self._responses)

    def webhooks_created(self) -> list[dict]:
        return list(self._webhooks_created)

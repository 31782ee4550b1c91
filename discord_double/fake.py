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
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import discord
from discord.ext import commands
from discord.http import Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

from discord_double.payloads import DiscordPayloads

EPHEMERAL = 64
# Tasks discord.py starts for one event; waiting for them means the event was fully handled.
EVENT_TASKS = (
    "discord.py:",
    "CommandTree-invoker",
    "discord-ui-view-dispatch",
    "discord-ui-dynamic-item",  # presses of persistent (DynamicItem) buttons
    "live-reply",
)
APP_OPTION_TYPES = {str: 3, int: 4, bool: 5, float: 10}
# What `fail` can break; "message_delete" covers the bot's and the webhook's delete routes.
FAULT_OPERATIONS = frozenset(
    {
        "webhook_send",
        "webhook_edit",
        "webhook_create",
        "channel_send",
        "channel_edit",
        "message_delete",
    }
)
WEBHOOK_DEFAULT_NAME = "Character bot"
MAX_WEBHOOKS_PER_CHANNEL = 15  # Discord's limit; one more is 400 code 30007
# What a bot may do in a DM (no server, so no Manage Webhooks).


@dataclass
class FakeResponse:
    """What discord.HTTPException reads from an aiohttp response."""

    status: int
    reason: str


def http_error(kind: type[discord.HTTPException], status: int, code: int, message: str):
    return kind(FakeResponse(status, message), {"code": code, "message": message})


def error_for(status: int, code: int, message: str) -> discord.HTTPException:
    """The exception discord.py raises for this answer once its own retries are used up."""
    if status == 403:
        kind = discord.Forbidden
    elif status == 404:
        kind = discord.NotFound
    elif status >= 500:
        kind = discord.DiscordServerError
    else:
        kind = discord.HTTPException
    return http_error(kind, status, code, message)


@dataclass
class Fault:
    status: int
    code: int
    message: str
    times: int  # calls that fail
    after: int  # calls that succeed first


class FakeDiscord(DiscordPayloads):
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

    # -- faults -----------------------------------------------------------------------------------

    def fail(
        self,
        operation: str,
        status: int,
        code: int,
        message: str = "Injected failure",
        *,
        times: int = 1,
        after: int = 0,
    ) -> None:
        """Make the next `times` calls of `operation` fail with `status`/`code`, after `after`
        calls that succeed. The error is what discord.py raises once its own retries are spent:
        403 Forbidden, 404 NotFound, 5xx DiscordServerError, anything else HTTPException.
        Faults for one operation queue up in the order given."""
        assert operation in FAULT_OPERATIONS, f"unknown operation {operation!r}"
        assert times >= 1 and after >= 0
        self._faults.setdefault(operation, deque()).append(
            Fault(status, code, message, times, after)
        )

    def _check_fault(self, operation: str, path: str) -> None:
        faults = self._faults.get(operation)
        if not faults:
            return
        fault = faults[0]
        if fault.after:
            fault.after -= 1
            return
        fault.times -= 1
        if fault.times == 0:
            faults.popleft()
        self.failed_calls.append(
            {"operation": operation, "path": path, "status": fault.status, "code": fault.code}
        )
        raise error_for(fault.status, fault.code, fault.message)

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

    @staticmethod
    def visible_text(message: dict) -> str:
        """What a message shows now: its last edit, else what was posted."""
        return message["edits"][-1] if message["edits"] else message["content"]

    def interaction_responses(self) -> list[dict]:
        return list(self._responses)

    def webhooks_created(self) -> list[dict]:
        return list(self._webhooks_created)

    def _posted(self, channel_id: int, payload: dict | None, **fields: Any) -> dict:
        """Record a message the bot posted and return Discord's answer for it."""
        payload = payload or {}
        message_id = self.new_id()
        self._messages.append(
            {
                "id": message_id,
                "channel_id": channel_id,
                "content": payload.get("content", ""),
                "allowed_mentions": payload.get("allowed_mentions"),
                "reference": (payload.get("message_reference") or {}).get("message_id"),
                "edits": [],
                "components": payload.get("components", []),  # as now shown (edits update it)
                "thread_id": None,
                "webhook_id": None,
                "deleted": False,
                "posted_at": time.perf_counter(),  # for latency figures (load tests)
                **fields,
            }
        )
        return {
            **self._message_base(message_id, channel_id, payload.get("content", "")),
            "author": self.user_payload(self.bot_user_id),
            "components": payload.get("components", []),
        }

    @staticmethod
    def _edited(message: dict, body: dict) -> None:
        """Apply an edit: the text when given, the buttons when given (else both stay)."""
        message["edits"].append(body.get("content", FakeDiscord.visible_text(message)))
        if "components" in body:
            message["components"] = body["components"] or []

    def _webhook_author(self, webhook_id: int, username: str | None) -> dict:
        return {
            "id": str(webhook_id),
            "username": username or WEBHOOK_DEFAULT_NAME,
            "discriminator": "0000",
            "avatar": None,
            "bot": True,
        }

    def _message(self, message_id: int, *, webhook_id: int | None = None) -> dict:
        """A live message (of that webhook, when given), else Discord's 404 10008."""
        for message in self._messages:
            if (
                message["id"] == message_id
                and not message["deleted"]
                and (webhook_id is None or message["webhook_id"] == webhook_id)
            ):
                return message
        raise http_error(discord.NotFound, 404, 10008, "Unknown Message")

    # -- the REST API the bot calls with its token ----------------------------------------------

    async def _rest(self, route: Route, *, files=None, form=None, **kwargs: Any) -> Any:
        path = route.url.removeprefix(Route.BASE)
        body = kwargs.get("json")
        if route.method == "GET" and path == "/users/@me":
            return self.user_payload(self.bot_user_id)
        if route.method == "GET" and path == "/oauth2/applications/@me":
            return {
                "id": str(self.application_id),
                "name": "Character Bot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.user_payload(self.admin_id),
                "verify_key": "0" * 64,
                "flags": 0,
            }
        if match := re.fullmatch(r"/channels/(\d+)/typing", path):
            self.typing_calls += 1
            return None
        if route.method == "POST" and path == "/users/@me/channels":
            # create_dm: the DM channel with that user.
            return self._dm_channel_payload(self.dm_channel_of(int(body["recipient_id"])))
        if match := re.fullmatch(r"/channels/(\d+)/messages", path):
            assert route.method == "POST" and not files, (route.method, path)
            self._check_fault("channel_send", path)
            return self._posted(int(match[1]), body, via="http", username=None, avatar_url=None)
        if match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path):
            message = self._message(int(match[2]))
            if route.method == "DELETE":
                self._check_fault("message_delete", path)
                if message["via"] != "http" and not self.bot_can_manage_messages:
                    raise http_error(discord.Forbidden, 403, 50013, "Missing Permissions")
                message["deleted"] = True
                return None
            assert route.method == "PATCH", (route.method, path)
            self._check_fault("channel_edit", path)
            if message["via"] != "http":
                raise http_error(
                    discord.Forbidden, 403, 50005, "Cannot edit a message authored by another user"
                )
            self._edited(message, body)
            return {
                **self._message_base(int(match[2]), int(match[1]), self.visible_text(message)),
                "author": self.user_payload(self.bot_user_id),
                "components": message["components"],
            }
        if match := re.fullmatch(r"/channels/(\d+)/webhooks", path):
            channel_id = int(match[1])
            if route.method == "GET":
                return [w for w in self._webhooks.values() if w["channel_id"] == str(channel_id)]
            self._check_fault("webhook_create", path)
            if not self.bot_can_manage_webhooks:
                raise http_error(discord.Forbidden, 403, 50013, "Missing Permissions")
            in_channel = [w for w in self._webhooks.values() if w["channel_id"] == str(channel_id)]
            if len(in_channel) >= MAX_WEBHOOKS_PER_CHANNEL:
                raise http_error(
                    discord.HTTPException, 400, 30007, "Maximum number of webhooks reached (15)"
                )
            webhook_id = self.new_id()
            webhook = {
                "id": str(webhook_id),
                "type": 1,
                "guild_id": str(self.guild_id),
                "channel_id": str(channel_id),
                "user": self.user_payload(self.bot_user_id),
                "name": body["name"],
                "avatar": None,
                "token": f"webhook-token-{webhook_id}",
                "application_id": str(self.application_id),
            }
            self._webhooks[webhook_id] = webhook
            self._webhooks_created.append(webhook)
            return webhook
        raise NotImplementedError(f"FakeDiscord has no REST route {route.method} {path}")

    # -- interaction callbacks, follow-ups and webhook messages ---------------------------------

    def _respond(self, kind: str, token: str, payload: dict) -> int:
        """Record an interaction response or follow-up; returns the id of its message."""
        data = payload.get("data") or payload
        message_id = self.new_id()
        self._responses.append(
            {
                "kind": kind,
                "type": payload.get("type"),
                "token": token,
                "message_id": message_id,
                "content": data.get("content"),
                "ephemeral": bool(data.get("flags", 0) & EPHEMERAL),
                "embeds": data.get("embeds", []),
                "components": data.get("components", []),
                "choices": data.get("choices"),
                "allowed_mentions": data.get("allowed_mentions"),
            }
        )
        return message_id

    def _interaction_message(self, token: str, message_id: int, data: dict) -> dict:
        interaction = self._interactions[token]
        return {
            **self._message_base(message_id, int(interaction["channel_id"]), ""),
            "author": self.user_payload(self.bot_user_id),
            "content": data.get("content") or "",
            "components": data.get("components", []),
            "flags": data.get("flags", 0),
            "webhook_id": str(self.application_id),
            "application_id": str(self.application_id),
        }

    def webhook_call(self, route: Route, payload: dict | None, params: dict | None) -> Any:
        path = route.url.removeprefix(Route.BASE)
        payload = payload or {}
        if match := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path):
            token = match[2]
            kinds = {5: "defer", 6: "defer_update", 7: "update", 8: "autocomplete"}
            kind = kinds.get(payload["type"], "response")
            message_id = self._respond(kind, token, payload)
            resource: dict[str, Any] = {"type": payload["type"]}
            if payload["type"] in (4, 5, 7):
                data = payload.get("data") or {}
                resource["message"] = self._interaction_message(token, message_id, data)
            interaction = self._interactions[token]
            return {
                "interaction": {
                    "id": interaction["id"],
                    "type": interaction["type"],
                    "response_message_id": str(message_id),
                    "response_message_loading": payload["type"] == 5,
                    "response_message_ephemeral": bool(
                        (payload.get("data") or {}).get("flags", 0) & EPHEMERAL
                    ),
                },
                "resource": resource,
            }
        match = re.fullmatch(r"/webhooks/(\d+)/([^/]+)(/messages/(\d+|@original))?", path)
        if match is None:
            raise NotImplementedError(f"FakeDiscord has no webhook route {route.method} {path}")
        webhook_id, token, message_id = int(match[1]), match[2], match[4]
        if webhook_id == self.application_id and token in self._interactions:
            kind = "followup" if route.method == "POST" else "edit"
            new_id = self._respond(kind, token, payload)
            return self._interaction_message(token, new_id, payload)
        operation = {"POST": "webhook_send", "PATCH": "webhook_edit", "DELETE": "message_delete"}
        self._check_fault(
            operation[route.method], f"/webhooks/{webhook_id}/<token>{path[match.end(2) :]}"
        )
        webhook = self._webhooks.get(webhook_id)
        if webhook is None or webhook["token"] != token:
            raise http_error(discord.NotFound, 404, 10015, "Unknown Webhook")
        thread_id = int(params["thread_id"]) if params and "thread_id" in params else None
        channel_id = thread_id or int(webhook["channel_id"])
        if route.method == "DELETE" and message_id:
            self._message(int(message_id), webhook_id=webhook_id)["deleted"] = True
            return None
        if route.method == "PATCH" and message_id:
            message = self._message(int(message_id), webhook_id=webhook_id)
            self._edited(message, payload)
            content = self.visible_text(message)
        elif route.method == "POST" and message_id is None:
            message = self._posted(
                channel_id,
                payload,
                via="webhook",
                username=payload.get("username"),
                avatar_url=payload.get("avatar_url"),
                thread_id=thread_id,
                webhook_id=webhook_id,
            )
            message = self._message(int(message["id"]), webhook_id=webhook_id)
            message_id, content = message["id"], message["content"]
        else:
            raise NotImplementedError(f"FakeDiscord has no webhook route {route.method} {path}")
        return {
            **self._message_base(int(message_id), channel_id, content),
            "author": self._webhook_author(webhook_id, message["username"] or webhook["name"]),
            "webhook_id": str(webhook_id),
            "components": message["components"],
        }


class RecordingWebhookAdapter(AsyncWebhookAdapter):
    """discord.py's webhook adapter with the network replaced by the fake server."""

    def __init__(self, fake: FakeDiscord) -> None:
        super().__init__()
        self.fake = fake

    async def request(self, route: Route, session: Any, *, payload=None, params=None, **_: Any):
        return self.fake.webhook_call(route, payload, params)

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
"""

from __future__ import annotations

import asyncio
import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import discord
from discord.ext import commands
from discord.http import Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

EPHEMERAL = 64
# Tasks discord.py starts for one event; waiting for them means the event was fully handled.
EVENT_TASKS = ("discord.py:", "CommandTree-invoker", "discord-ui-view-dispatch", "live-reply")
APP_OPTION_TYPES = {str: 3, int: 4, bool: 5, float: 10}


@dataclass
class FakeResponse:
    """What discord.HTTPException reads from an aiohttp response."""

    status: int
    reason: str


def http_error(kind: type[discord.HTTPException], status: int, code: int, message: str):
    return kind(FakeResponse(status, message), {"code": code, "message": message})


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class FakeDiscord:
    """One server with a text channel, a thread in it, an admin and an ordinary member."""

    def __init__(self, *, bot_can_manage_webhooks: bool = True) -> None:
        self.bot_can_manage_webhooks = bot_can_manage_webhooks
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
        """A person posts in the channel; returns the message id."""
        channel_id = channel_id or self.channel_id
        author_id = author_id or self.member_id
        if mentions_bot:
            content = f"<@{self.bot_user_id}> {content}".rstrip()
        payload = {
            **self._message_base(self.new_id(), channel_id, content),
            "author": self.user_payload(author_id),
            "member": self.member_payload(author_id, with_user=False),
            "mentions": [self.user_payload(self.bot_user_id)] if mentions_bot else [],
            "type": 19 if reply_to else 0,
        }
        if reply_to:
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(reply_to),
                "channel_id": str(channel_id),
                "guild_id": str(self.guild_id),
            }
        await self._dispatch("MESSAGE_CREATE", payload)
        return int(payload["id"])

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
        self, command: str, option: str, typed: str, *, user_id: int | None = None
    ) -> list[dict]:
        """A person types `typed` into an option; returns the choices the bot offered."""
        data = {
            "id": str(self.new_id()),
            "name": command,
            "type": 1,
            "options": [{"name": option, "type": 3, "value": typed, "focused": True}],
        }
        await self._dispatch("INTERACTION_CREATE", self._interaction(4, data, user_id, None))
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
        user_id = user_id or int(first["member"]["user"]["id"])
        payload = self._interaction(3, data, user_id, int(first["channel_id"]))
        payload["message"] = message
        await self._dispatch("INTERACTION_CREATE", payload)

    def expire_webhooks(self) -> None:
        """Someone deletes the bot's webhooks in the server settings."""
        self._webhooks.clear()

    # -- what the bot did -----------------------------------------------------------------------

    def channel_messages(self, channel_id: int | None = None) -> list[dict]:
        """Messages the bot posted (as itself or through webhooks), oldest first."""
        return [m for m in self._messages if channel_id is None or m["channel_id"] == channel_id]

    def interaction_responses(self) -> list[dict]:
        return list(self._responses)

    def webhooks_created(self) -> list[dict]:
        return list(self._webhooks_created)

    # -- payloads -------------------------------------------------------------------------------

    def user_payload(self, user_id: int) -> dict:
        names = {
            self.bot_user_id: "Character Bot",
            self.admin_id: "Admin",
            self.member_id: "Member",
        }
        return {
            "id": str(user_id),
            "username": names.get(user_id, f"user{user_id % 1000}"),
            "global_name": None,
            "discriminator": "0",
            "avatar": None,
            "bot": user_id == self.bot_user_id,
        }

    def member_payload(self, user_id: int, *, with_user: bool = True) -> dict:
        roles = {self.admin_id: [self.admin_role_id], self.bot_user_id: [self.bot_role_id]}
        payload = {
            "roles": [str(r) for r in roles.get(user_id, [])],
            "joined_at": now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
        }
        if with_user:
            payload["user"] = self.user_payload(user_id)
        return payload

    def _permissions(self, user_id: int) -> discord.Permissions:
        member = discord.Permissions(
            view_channel=True,
            send_messages=True,
            read_message_history=True,
            use_application_commands=True,
        )
        if user_id == self.admin_id:
            return discord.Permissions.all()
        if user_id == self.bot_user_id:
            member.update(
                embed_links=True,
                send_messages_in_threads=True,
                manage_webhooks=self.bot_can_manage_webhooks,
            )
        return member

    def _role(self, role_id: int, name: str, position: int, permissions: discord.Permissions):
        return {
            "id": str(role_id),
            "name": name,
            "color": 0,
            "hoist": False,
            "position": position,
            "permissions": str(permissions.value),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def _channel_payload(self) -> dict:
        return {
            "id": str(self.channel_id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }

    def _thread_payload(self) -> dict:
        return {
            "id": str(self.thread_id),
            "type": 11,
            "guild_id": str(self.guild_id),
            "parent_id": str(self.channel_id),
            "owner_id": str(self.member_id),
            "name": "side quest",
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": now_iso(),
                "locked": False,
            },
        }

    def guild_payload(self) -> dict:
        everyone = discord.Permissions(
            view_channel=True, send_messages=True, read_message_history=True
        )
        return {
            "id": str(self.guild_id),
            "name": "Test server",
            "icon": None,
            "owner_id": str(self.admin_id),
            "roles": [
                self._role(self.guild_id, "@everyone", 0, everyone),
                self._role(
                    self.bot_role_id, "Character Bot", 1, self._permissions(self.bot_user_id)
                ),
                self._role(self.admin_role_id, "Admin", 2, discord.Permissions.all()),
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "member_count": 3,
            "large": False,
            "unavailable": False,
            "members": [self.member_payload(self.bot_user_id)],
            "channels": [self._channel_payload()],
            "threads": [self._thread_payload()],
            "voice_states": [],
            "presences": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "system_channel_flags": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "afk_timeout": 300,
        }

    def _message_base(self, message_id: int, channel_id: int, content: str) -> dict:
        return {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "guild_id": str(self.guild_id),
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }

    def _interaction(self, kind: int, data: dict, user_id: int | None, channel_id: int | None):
        user_id = user_id or self.member_id
        channel_id = channel_id or self.channel_id
        channel = (
            self._thread_payload() if channel_id == self.thread_id else self._channel_payload()
        )
        payload = {
            "id": str(self.new_id()),
            "application_id": str(self.application_id),
            "type": kind,
            "token": f"interaction-token-{self.new_id()}",
            "version": 1,
            "guild_id": str(self.guild_id),
            "channel_id": str(channel_id),
            "channel": channel,
            "member": {
                **self.member_payload(user_id),
                "permissions": str(self._permissions(user_id).value),
            },
            "app_permissions": str(self._permissions(self.bot_user_id).value),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
            "data": data,
        }
        self._interactions[payload["token"]] = payload
        return payload

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
                "thread_id": None,
                **fields,
            }
        )
        return {
            **self._message_base(message_id, channel_id, payload.get("content", "")),
            "author": self.user_payload(self.bot_user_id),
        }

    def _message(self, message_id: int) -> dict:
        for message in self._messages:
            if message["id"] == message_id:
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
        if match := re.fullmatch(r"/channels/(\d+)/messages", path):
            assert route.method == "POST" and not files, (route.method, path)
            return self._posted(int(match[1]), body, via="http", username=None, avatar_url=None)
        if match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path):
            assert route.method == "PATCH", (route.method, path)
            self._message(int(match[2]))["edits"].append(body["content"])
            return {
                **self._message_base(int(match[2]), int(match[1]), body["content"]),
                "author": self.user_payload(self.bot_user_id),
            }
        if match := re.fullmatch(r"/channels/(\d+)/webhooks", path):
            channel_id = int(match[1])
            if route.method == "GET":
                return [w for w in self._webhooks.values() if w["channel_id"] == str(channel_id)]
            if not self.bot_can_manage_webhooks:
                raise http_error(discord.Forbidden, 403, 50013, "Missing Permissions")
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
            kind = {7: "update", 8: "autocomplete", 5: "defer"}.get(payload["type"], "response")
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
        webhook = self._webhooks.get(webhook_id)
        if webhook is None or webhook["token"] != token:
            raise http_error(discord.NotFound, 404, 10015, "Unknown Webhook")
        thread_id = int(params["thread_id"]) if params and "thread_id" in params else None
        channel_id = thread_id or int(webhook["channel_id"])
        if route.method == "PATCH" and message_id:
            message = self._message(int(message_id))
            message["edits"].append(payload["content"])
            content = payload["content"]
        elif route.method == "POST" and message_id is None:
            message = self._posted(
                channel_id,
                payload,
                via="webhook",
                username=payload.get("username"),
                avatar_url=payload.get("avatar_url"),
                thread_id=thread_id,
            )
            message_id, content = message["id"], message["content"]
        else:
            raise NotImplementedError(f"FakeDiscord has no webhook route {route.method} {path}")
        return {
            **self._message_base(int(message_id), channel_id, content),
            "author": {
                "id": str(webhook_id),
                "username": payload.get("username") or webhook["name"],
                "discriminator": "0000",
                "avatar": None,
                "bot": True,
            },
            "webhook_id": str(webhook_id),
        }


class RecordingWebhookAdapter(AsyncWebhookAdapter):
    """discord.py's webhook adapter with the network replaced by the fake server."""

    def __init__(self, fake: FakeDiscord) -> None:
        super().__init__()
        self.fake = fake

    async def request(self, route: Route, session: Any, *, payload=None, params=None, **_: Any):
        return self.fake.webhook_call(route, payload, params)

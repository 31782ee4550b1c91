"""Discord's side of the bot's calls, for FakeDiscord: the REST routes the bot calls with its
token, interaction callbacks, follow-ups and webhook messages, and the faults a test injects.

A mixin, like `payloads.DiscordPayloads`: it records what the bot posted and edited in the fake's
state, which `FakeDiscord` reads back for the tests. A route it does not know fails loudly.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import discord
from discord.http import Route
from discord.webhook.async_ import AsyncWebhookAdapter

EPHEMERAL = 64
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


class DiscordRoutes:
    """What Discord answers to the bot's calls; mixed into FakeDiscord."""

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
    def visible_text(message: dict) -> str:
        """What a message shows now: its last edit, else what was posted."""
        return message["edits"][-1] if message["edits"] else message["content"]

    @staticmethod
    def _edited(message: dict, body: dict) -> None:
        """Apply an edit: the text when given, the buttons when given (else both stay)."""
        message["edits"].append(body.get("content", DiscordRoutes.visible_text(message)))
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

    def __init__(self, fake: DiscordRoutes) -> None:
        super().__init__()
        self.fake = fake

    async def request(self, route: Route, session: Any, *, payload=None, params=None, **_: Any):
        return self.fake.webhook_call(route, payload, params)

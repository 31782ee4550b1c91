"""Secrets never reach the log: discord.py's own debug lines, every level, tracebacks.

The filter is installed the way the bot installs it (on the root logger's handlers); a handler
writing to a StringIO stands for stderr. discord.py's real HTTP and webhook code runs against a
local aiohttp server standing in for Discord's API, so the lines checked are the ones it writes.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import discord
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from discord.http import HTTPClient, MultipartParameters, Route
from discord.webhook.async_ import AsyncWebhookAdapter

from bot.__main__ import config_secrets
from bot.log_redaction import REDACTED, SecretRedactingFilter, install_redaction, redact
from bot.logging_setup import setup_logging
from tests.helpers import make_config

BOT_TOKEN = "MTA1NzY1NjE4NjE0NTI1NTQ1OA.GxYz12.bot-token-for-redaction-tests_abcdefgh"
WEBHOOK_ID = 1057656186145255458
WEBHOOK_TOKEN = "Wh0oKt0k3n-abcdefghijklmnopqrstuvwxyz_0123456789ABCDEFGHIJKLMNOPQRSTU"
INTERACTION_ID = 1057656186145255999
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTA1NzY1NjE4NjE0NTI1NTk5OTpzZWNyZXQtdG9rZW4tZm9yLXRlc3Rz"
WEBHOOK_URL = f"https://discord.com/api/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}"
SECRETS = (BOT_TOKEN, WEBHOOK_TOKEN, INTERACTION_TOKEN)


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """A root handler at DEBUG, redacted by `install_redaction` like the bot's stderr handler."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    install_redaction()
    yield stream
    root.removeHandler(handler)
    root.setLevel(old_level)


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def discord_json(payload: dict) -> web.Response:
    # Exactly Discord's content type: discord.py parses JSON only for this header value.
    body = json.dumps(payload).encode()
    return web.Response(body=body, headers={"Content-Type": "application/json"})


@pytest.fixture
async def discord_api(monkeypatch) -> Iterator[TestServer]:
    """Discord's REST API for a login, a webhook creation, a webhook send and a callback."""
    user = {"id": "1", "username": "charbot", "discriminator": "0", "avatar": None, "bot": True}

    async def me(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bot {BOT_TOKEN}"
        return discord_json(user)

    async def create_webhook(request: web.Request) -> web.Response:
        return discord_json(
            {
                "id": str(WEBHOOK_ID),
                "type": 1,
                "name": (await request.json())["name"],
                "channel_id": request.match_info["channel"],
                "token": WEBHOOK_TOKEN,
                "url": WEBHOOK_URL,
            }
        )

    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/api/v10/users/@me", me)
    app.router.add_post("/api/v10/channels/{channel}/webhooks", create_webhook)
    app.router.add_post("/api/v10/webhooks/{id}/{token}", no_content)
    app.router.add_post("/api/v10/interactions/{id}/{token}/callback", no_content)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setattr(Route, "BASE", str(server.make_url("/api/v10")))
    yield server
    await server.close()


async def test_discord_py_request_lines_are_redacted(discord_api, log_output):
    # The bot's HTTP client: log in, create a webhook (Discord answers with its token and URL).
    http = HTTPClient(asyncio.get_running_loop())
    try:
        await http.static_login(BOT_TOKEN)
        created = await http.create_webhook(42, name="Goku")
        assert created["token"] == WEBHOOK_TOKEN
    finally:
        await http.close()
    # The webhook adapter: a webhook message (the speaker) and an interaction callback.
    async with aiohttp.ClientSession() as session:
        webhook = discord.Webhook.from_url(WEBHOOK_URL, session=session)
        await webhook.send("Kamehameha!")
        await AsyncWebhookAdapter().create_interaction_response(
            INTERACTION_ID,
            INTERACTION_TOKEN,
            session=session,
            params=MultipartParameters({"type": 4, "data": {"content": "hi"}}, None, None),
        )
    text = log_output.getvalue()
    assert_no_secrets(text)
    # The lines are there, with the secrets replaced and the rest intact.
    assert "DEBUG discord.http: GET http://127.0.0.1:" in text
    assert f"/api/v10/channels/42/webhooks has received {{'id': '{WEBHOOK_ID}'" in text
    assert f"'token': '{REDACTED}'" in text
    assert f"'url': 'https://discord.com/api/webhooks/{WEBHOOK_ID}/{REDACTED}'" in text
    assert (
        f"DEBUG discord.webhook.async_: Webhook ID {WEBHOOK_ID} with POST http://127.0.0.1:" in text
    )
    assert f"/api/v10/webhooks/{WEBHOOK_ID}/{REDACTED} has returned status code 204" in text
    assert f"/api/v10/interactions/{INTERACTION_ID}/{REDACTED}/callback has returned" in text


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_every_level_and_library_logger(level, log_output):
    # discord.py's own format strings, from webhook/async_.py, http.py and gateway.py.
    url = f"https://discord.com/api/v10/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}?wait=1"
    logging.getLogger("discord.webhook.async_").log(
        level, "Webhook ID %s with %s %s has returned status code %s", WEBHOOK_ID, "POST", url, 200
    )
    headers = {"User-Agent": "DiscordBot", "Authorization": f"Bot {BOT_TOKEN}"}
    logging.getLogger("discord.http").log(
        level, "%s %s with %s has returned %s", "GET", headers, None, 200
    )
    event = {
        "t": "INTERACTION_CREATE",
        "d": {"id": str(INTERACTION_ID), "token": INTERACTION_TOKEN},
    }
    logging.getLogger("discord.gateway").log(
        level, "For Shard ID %s: WebSocket Event: %s", None, event
    )
    text = log_output.getvalue()
    assert_no_secrets(text)
    assert len(text.splitlines()) == 3
    assert f"webhooks/{WEBHOOK_ID}/{REDACTED}?wait=1 has returned status code 200" in text
    assert f"'Authorization': 'Bot {REDACTED}'" in text
    assert f"'id': '{INTERACTION_ID}', 'token': '{REDACTED}'" in text


def test_exception_tracebacks_are_redacted(log_output):
    log = logging.getLogger("bot.discord_app.speaker")
    callback = (
        f"https://discord.com/api/v10/interactions/{INTERACTION_ID}/{INTERACTION_TOKEN}/callback"
    )
    try:
        raise RuntimeError(f"POST {WEBHOOK_URL} failed after {callback}")
    except RuntimeError as exc:
        log.exception("Sending to %s failed", WEBHOOK_URL)
        error = exc
    # As the bot's error handler logs it: exc_info given as the exception object.
    logging.getLogger("bot.discord_app.client").error("Command /chat failed", exc_info=error)
    text = log_output.getvalue()
    assert_no_secrets(text)
    assert text.count("Traceback (most recent call last):") == 2
    assert text.count(f"RuntimeError: POST https://discord.com/api/webhooks/{WEBHOOK_ID}/***") == 2
    assert f"interactions/{INTERACTION_ID}/***/callback" in text


def test_stack_info_is_redacted(log_output):
    logging.getLogger("discord.client").warning("token %s", BOT_TOKEN, stack_info=True)
    text = log_output.getvalue()
    assert_no_secrets(text)
    assert "Stack (most recent call last):" in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"Authorization: Bot {BOT_TOKEN}", "Authorization: Bot ***"),
        (f'{{"Authorization": "Bearer {WEBHOOK_TOKEN}"}}', '{"Authorization": "Bearer ***"}'),
        (f"sent Bot {WEBHOOK_TOKEN} along", "sent Bot *** along"),
        (f"token is {BOT_TOKEN}.", "token is ***."),
        (f"GET /oauth?token={WEBHOOK_TOKEN}&x=1", "GET /oauth?token=***&x=1"),
        ('{"access_token": "abc.def-ghi"}', '{"access_token": "***"}'),
        ("redis://default:s3cret-pw@redis:6379/0", "redis://default:***@redis:6379/0"),
        (
            "rediss://:p4ss@host/0 and http://user:pw@proxy:3128",
            "rediss://:***@host/0 and http://user:***@proxy:3128",
        ),
    ],
)
def test_patterns(raw, expected):
    assert redact(raw) == expected
    assert redact(expected) == expected  # idempotent: a filter on two handlers is harmless


@pytest.mark.parametrize(
    "message",
    [
        "Logged in as Goku#0001 in 3 servers",
        "Bot ready; loaded cogs.summon, cogs.chat",
        "GET https://discord.com/api/v10/users/@me with None has returned 200",
        "Webhook ID 123 has exhausted its rate limit bucket (retry: 1.5).",
        "redis://127.0.0.1:6379/0 (embedded: /home/me/.data/redis.sock)",
        "prompt token_count=812 max_tokens=96, 100% of the budget",
        "Goku: Kamehameha!!! 🔥 こんにちは",
        "https://discord.com/api/v10/channels/1/messages/@original",
    ],
)
def test_ordinary_messages_unchanged(message, log_output):
    logging.getLogger("bot").info("%s", message)
    logging.getLogger("bot").info(message)  # no args: a "%" is left as it is
    assert log_output.getvalue() == f"INFO bot: {message}\n" * 2


def test_registered_secrets_and_config(log_output):
    config = make_config(
        discord={"token": "plain-secret-not-token-shaped"},
        redis={"url": "redis://default:hunter2-password@db:6379/0"},
    )
    secrets = config_secrets(config)
    assert secrets == ["plain-secret-not-token-shaped", "hunter2-password"]
    install_redaction(secrets)
    log = logging.getLogger("redis.connection")
    log.error("AUTH %s failed for %s", "hunter2-password", config.discord_token)
    assert log_output.getvalue() == "ERROR redis.connection: AUTH *** failed for ***\n"


def test_installed_on_every_root_handler_once(log_output):
    setup_logging(verbose=True)  # the bot's own set-up (basicConfig is a no-op under pytest)
    install_redaction()
    for handler in logging.getLogger().handlers:
        filters = [f for f in handler.filters if isinstance(f, SecretRedactingFilter)]
        assert len(filters) == 1


def test_filter_on_its_own():
    record = logging.LogRecord(
        "discord.http", logging.DEBUG, __file__, 1, "%s %s", ("GET", WEBHOOK_URL), None
    )
    assert SecretRedactingFilter().filter(record)
    assert record.getMessage() == f"GET https://discord.com/api/webhooks/{WEBHOOK_ID}/***"
    assert record.args is None

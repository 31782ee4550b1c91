"""Fixtures for tests that drive the Discord bot: a cast of two characters, a config that uses
REDIS_URL's server when set, CharacterBot instances logged in to a FakeDiscord.

Loaded for every test module by `pytest_plugins` in conftest.py, so tests just name them.
"""

from __future__ import annotations

import os
import shutil

import pytest
from pydantic import SecretStr

from bot.config import PROJECT_ROOT
from bot.discord_app.client import CharacterBot
from bot.services import open_services
from discord_double.fake import FakeDiscord
from tests.helpers import write_character


def pings_nobody(allowed_mentions: dict | None) -> bool:
    """Discord's allowed_mentions that let no mention in the text notify anyone."""
    return (
        allowed_mentions is not None
        and allowed_mentions.get("parse") == []
        and not allowed_mentions.get("users")
        and not allowed_mentions.get("roles")
        and not allowed_mentions.get("replied_user")
    )


@pytest.fixture
def characters_dir(tmp_path):
    root = tmp_path / "characters"
    shutil.copytree(
        PROJECT_ROOT / "characters" / "goku",
        root / "goku",
        ignore=shutil.ignore_patterns("adapter*"),
    )
    shutil.copytree(PROJECT_ROOT / "characters" / "_lorebooks", root / "_lorebooks")
    write_character(
        root,
        id="vegeta",
        name="Vegeta",
        aliases=["Prince"],
        greeting="Hmph. @everyone <@&123> <@456> kneel before the prince!",
        fallback_lines=["Hmph."],
    )
    return root


def _redis_url() -> SecretStr | None:
    # model_copy does not validate: give the field its declared type.
    url = os.environ.get("REDIS_URL")
    return SecretStr(url) if url else None


@pytest.fixture
def bot_config(config, characters_dir, tmp_path):
    return config.model_copy(
        update={
            "characters_dir": characters_dir,
            "data_dir": tmp_path / "data",
            "redis": config.redis.model_copy(update={"url": _redis_url()}),
            "discord": config.discord.model_copy(
                update={"streaming": False, "user_cooldown_seconds": 0.0}
            ),
        }
    )


class BotRunner:
    """Starts CharacterBot instances against one FakeDiscord and one Redis namespace."""

    def __init__(self, config, engine, key_prefix) -> None:
        self.config = config
        self.engine = engine
        self.key_prefix = key_prefix
        self.bots: list[CharacterBot] = []

    async def start(self, fake: FakeDiscord, **discord_settings) -> CharacterBot:
        config = self.config
        if discord_settings:
            config = config.model_copy(
                update={"discord": config.discord.model_copy(update=discord_settings)}
            )
        services = await open_services(config, engine=self.engine, key_prefix=self.key_prefix)
        bot = CharacterBot(config, services=services)
        self.bots.append(bot)
        await fake.login(bot)
        return bot

    async def stop(self, bot: CharacterBot) -> None:
        self.bots.remove(bot)
        await bot.close()
        await bot.services.close()


@pytest.fixture
async def runner(bot_config, clean_engine, key_prefix):
    runner = BotRunner(bot_config, clean_engine, key_prefix)
    yield runner
    for bot in list(runner.bots):
        await runner.stop(bot)


@pytest.fixture
async def fake():
    fake = FakeDiscord()
    yield fake
    # Whatever a test did: nothing the bot posted may ping anyone.
    for message in fake.channel_messages():
        assert pings_nobody(message["allowed_mentions"]), message


@pytest.fixture
async def bot(runner, fake):
    return await runner.start(fake)


def last_response(fake: FakeDiscord) -> dict:
    return fake.interaction_responses()[-1]


async def summon(fake, name="goku", **kwargs):
    await fake.slash("summon", character=name, **kwargs)
    return last_response(fake)

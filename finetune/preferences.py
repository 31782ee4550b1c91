"""`python -m finetune preferences export | synth ID`: preference pairs into files for DPO.

export: the character's swipe and vote records from Redis (where the bot keeps them) become
`pairs.jsonl` (kept vs swiped away, up vs down on one prompt), `votes.jsonl` (every vote on its
own) and `pairs.md` (the dataset card), in `characters/<id>/data/preferences/`.
synth: pairs from the card's rules and the character's own lines (`finetune.synthesize`) become
`synthetic.jsonl` and `synthetic.md` there.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.characters import Character, CharacterRegistry
from bot.config import Config
from bot.preferences import PreferenceRecord, PreferenceStore
from bot.redis_connection import connect_redis
from bot.training_data import DatasetFiles, read_records
from finetune.errors import FinetuneError
from finetune.preference_data import (
    SYNTHETIC_PAIRS,
    USER_PAIRS,
    USER_VOTES,
    PreferencePair,
    card_markdown,
    pairs_from_records,
    write_pairs_with_card,
)
from finetune.synthesize import SynthOptions, SynthResult, synthesize

_AGO = re.compile(r"^(\d+)([dh])$")


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """`--since`: a UTC date (YYYY-MM-DD) or an age (7d, 12h) -> a Unix time; None: all."""
    if value is None:
        return None
    now = time.time() if now is None else now
    if found := _AGO.match(value.strip()):
        amount, unit = int(found.group(1)), found.group(2)
        return now - amount * (86400 if unit == "d" else 3600)
    try:
        day = datetime.strptime(value.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise FinetuneError(
            f"--since {value!r}: expected a date like 2026-11-01 (UTC) or an age like 7d or 12h"
        ) from None
    return day.timestamp()


@dataclass(frozen=True)
class ExportResult:
    pairs: list[PreferencePair]
    records: int
    votes: int
    folder: Path


async def read_records_from_redis(
    config: Config, character_id: str, since: float | None
) -> list[PreferenceRecord]:
    redis = await connect_redis(config.redis_url, config.data_path)
    try:
        store = PreferenceStore(redis.client, key_prefix=config.redis.key_prefix)
        return await store.records(character_id, since=since)
    finally:
        await redis.close()


def export_records(
    records: list[PreferenceRecord], character: Character, folder: Path, since: float | None
) -> ExportResult:
    """Write the records' pairs, votes and card to `folder` (all three, or none)."""
    pairs, votes = pairs_from_records(records)
    versions = sorted({r.adapter_version or "none" for r in records})
    first = min((r.created for r in records), default=None)
    facts: dict[str, object] = {
        "records": f"{len(records)} ({sum(r.kind == 'swipe' for r in records)} swipe, "
        f"{sum(r.kind == 'vote' for r in records)} vote)",
        "votes": f"{len(votes)} ({sum(v.label for v in votes)} up, "
        f"{sum(not v.label for v in votes)} down)",
        "adapter versions": ", ".join(versions) or "none",
        "since": _day(since) if since is not None else "all records",
        "first record": _day(first) if first is not None else "none",
        "user ids": "none stored: a voter is an HMAC pseudonym, and it is not exported",
    }
    pairs_path = folder / USER_PAIRS
    card = card_markdown(f"Preferences of {character.name} from users", pairs, facts)
    votes_text = "".join(v.to_json() + "\n" for v in votes)
    write_pairs_with_card(
        pairs_path, pairs, pairs_path.with_suffix(".md"), card, {folder / USER_VOTES: votes_text}
    )
    return ExportResult(pairs, len(records), len(votes), folder)


def _day(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_export(
    config: Config, character: Character, since: str | None, out: Path | None
) -> ExportResult:
    folder = out or DatasetFiles.of(config.characters_path, character.id).preferences
    start = parse_since(since)
    records = asyncio.run(read_records_from_redis(config, character.id, start))
    return export_records(records, character, folder, start)


def run_synth(
    config: Config,
    registry: CharacterRegistry,
    character: Character,
    options: SynthOptions,
    out: Path | None,
) -> tuple[SynthResult, Path]:
    """Synthesize the character's pairs with the embedded engine and write them with a card."""
    from bot.engine import InferenceEngine

    for name in ("contexts", "samples"):
        if getattr(options, name) < 1:
            raise FinetuneError(f"--{name} {getattr(options, name)}: give at least 1")
    for name, zero in (
        ("contrast", "none"),
        ("topic_messages", "none"),
        ("chosen_uses", "no limit"),
    ):
        if getattr(options, name) < 0:
            flag = "--" + name.replace("_", "-")
            raise FinetuneError(f"{flag} {getattr(options, name)}: give 0 ({zero}) or more")
    files = DatasetFiles.of(config.characters_path, character.id)
    if not files.train.is_file():
        raise FinetuneError(
            f"{files.train} does not exist: synth asks rule questions after the character's "
            f"training dialogue; build it with `python -m finetune build --character "
            f"{character.id} SOURCE...`"
        )
    records = read_records(files.train)
    engine = InferenceEngine.from_config(config)
    for member in registry:
        if member.adapter_path is not None:
            engine.load_adapter(member.id, member.adapter_path)
    result = synthesize(
        engine,
        character,
        list(registry),
        records,
        options,
        budget=config.prompt.token_budget,
    )
    pairs_path = out or files.preferences / SYNTHETIC_PAIRS
    card_path = pairs_path.with_suffix(".md")
    facts = {
        **result.facts(),
        "models sampled": "the base model and " + (character.id if character.has_adapter else "-"),
        "options": ", ".join(f"{k}={v}" for k, v in options.__dict__.items()),
    }
    card = card_markdown(f"Synthetic preferences of {character.name}", result.pairs, facts)
    write_pairs_with_card(pairs_path, result.pairs, card_path, card)
    return result, pairs_path

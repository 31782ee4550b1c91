"""What users kept, swiped away and voted on: preference records in Redis, per character.

One record per decision, upserted under a stable id so that a second click changes it rather
than adding another: `swipe:<message>` (the alternative shown when the conversation moved on is
`chosen`, the others `rejected`) and `vote:<message>:<voter>` (up: `chosen`, down: `rejected`).
The prompt is stored as the model saw it. No raw user ids: a voter is an HMAC of the user id
under a random key made once per Redis database (`voter_hash`).

Keys: `<prefix>:prefs:<character>` a hash record id -> JSON; `<prefix>:prefs:channel:<channel>`
a set of `<character> <record id>` so that /forget can remove a channel's records.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

KINDS = ("swipe", "vote")


@dataclass(frozen=True)
class PreferenceRecord:
    id: str  # swipe:<message id> | vote:<message id>:<voter hash>
    kind: Literal["swipe", "vote"]
    character_id: str
    prompt: str  # the prompt text exactly as the model saw it (chat template applied)
    chosen: str | None  # the kept or up-voted answer
    rejected: tuple[str, ...]  # answers swiped away, or the down-voted one
    adapter_version: str  # short hash of the adapter that answered ("" = no adapter)
    created: float = field(default_factory=time.time)
    voter: str | None = None  # HMAC of the voter's user id (votes only)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"preference kind {self.kind!r} is not one of {KINDS}")
        if self.chosen is None and not self.rejected:
            raise ValueError("a preference record needs a chosen or a rejected answer")

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(chosen, rejected) pairs this record gives on its own."""
        if self.chosen is None:
            return []
        return [(self.chosen, r) for r in self.rejected if r.strip() != self.chosen.strip()]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> PreferenceRecord:
        """Parse a stored record; ValueError (starting "malformed preference record") if not."""
        try:
            data = json.loads(raw)
            data["rejected"] = tuple(data["rejected"])
            record = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"malformed preference record: {exc}") from None
        for name in ("id", "character_id", "prompt", "adapter_version"):
            if not isinstance(getattr(record, name), str):
                raise ValueError(f"malformed preference record: {name} is not a string")
        return record


class PreferenceStore:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str = "charbot") -> None:
        self.redis = redis
        self.key_prefix = key_prefix

    def key(self, character_id: str) -> str:
        return f"{self.key_prefix}:prefs:{character_id}"

    def channel_key(self, channel_id: str | int) -> str:
        return f"{self.key_prefix}:prefs:channel:{channel_id}"

    async def put(self, channel_id: str | int, record: PreferenceRecord) -> None:
        """Write (or replace) the record and index it under its channel, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(record.character_id), record.id, record.to_json())
            pipe.sadd(self.channel_key(channel_id), f"{record.character_id} {record.id}")
            await pipe.execute()

    async def get(self, character_id: str, record_id: str) -> PreferenceRecord | None:
        raw = await self.redis.hget(self.key(character_id), record_id)
        return None if raw is None else PreferenceRecord.from_json(raw)

    async def records(
        self, character_id: str, *, since: float | None = None
    ) -> list[PreferenceRecord]:
        """The character's records, oldest first; `since` keeps those created at or after it.
        Malformed entries are skipped with a warning."""
        out = []
        for record_id, raw in (await self.redis.hgetall(self.key(character_id))).items():
            try:
                record = PreferenceRecord.from_json(raw)
            except ValueError as exc:
                log.warning("Skipping %s in %s: %s", record_id, self.key(character_id), exc)
                continue
            if since is None or record.created >= since:
                out.append(record)
        return sorted(out, key=lambda r: (r.created, r.id))

    async def forget_channel(self, channel_id: str | int) -> int:
        """Remove every record made in the channel; returns how many were removed."""
        channel_key = self.channel_key(channel_id)
        entries = await self.redis.smembers(channel_key)
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                character_id, record_id = entry.split(" ", 1)
                pipe.hdel(self.key(character_id), record_id)
            pipe.delete(channel_key)
            results = await pipe.execute()
        return int(sum(results[:-1]))

    async def voter_hash(self, user_id: str | int) -> str:
        """A stable pseudonym for a user: HMAC-SHA256 under this database's own random key
        (made on first use), so the id cannot be recovered by hashing candidate ids."""
        key_name = f"{self.key_prefix}:prefs:voter-key"
        await self.redis.set(key_name, secrets.token_hex(32), nx=True)
        key = await self.redis.get(key_name)
        digest = hmac.new(key.encode(), str(user_id).encode(), hashlib.sha256)
        return digest.hexdigest()[:16]

"""Per-channel conversation history in Redis: a capped, expiring list of JSON turns."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import WatchError

log = logging.getLogger(__name__)

ROLES = ("user", "character")


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "character"]
    author: str  # display name of who spoke
    content: str
    # For character turns the speaker; for user turns the character addressed (if any).
    character_id: str | None = None
    timestamp: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> Turn:
        """Parse a stored turn; ValueError (starting "malformed history turn") if it is not one."""
        try:
            data = json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"malformed history turn {_excerpt(raw)}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"malformed history turn {_excerpt(raw)}: not a JSON object")
        missing = [name for name in ("role", "author", "content") if name not in data]
        if missing:
            raise ValueError(f"malformed history turn {_excerpt(raw)}: missing {missing}")
        role, character_id = data["role"], data.get("character_id")
        timestamp = data.get("timestamp", 0.0)
        if role not in ROLES:
            raise ValueError(f"malformed history turn: role {role!r} is not one of {ROLES}")
        for name in ("author", "content"):
            if not isinstance(data[name], str):
                raise ValueError(f"malformed history turn: {name} is not a string")
        if character_id is not None and not isinstance(character_id, str):
            raise ValueError("malformed history turn: character_id is not a string or null")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise ValueError("malformed history turn: timestamp is not a number")
        return cls(
            role=role,
            author=data["author"],
            content=data["content"],
            character_id=character_id,
            timestamp=float(timestamp),
        )


def _excerpt(raw: object, size: int = 80) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return repr(text[:size] + ("..." if len(text) > size else ""))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class HistoryStore:
    """Each channel's turns as a Redis list of JSON, capped to the newest `max_turns`.

    Every append refreshes the expiry, so a channel is forgotten `ttl_seconds` after its last
    message (0: kept until cleared).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        max_turns: int,
        ttl_seconds: int,
        key_prefix: str = "charbot",
    ) -> None:
        if not _is_int(max_turns) or max_turns < 1:
            raise ValueError(f"max_turns must be an integer of at least 1, got {max_turns!r}")
        if not _is_int(ttl_seconds) or ttl_seconds < 0:
            raise ValueError(
                f"ttl_seconds must be an integer, 0 (no expiry) or more, got {ttl_seconds!r}"
            )
        self.redis = redis
        self.max_turns = max_turns
        self.ttl_seconds = ttl_seconds
        self.key_prefix = key_prefix

    def key(self, channel_id: str | int) -> str:
        return f"{self.key_prefix}:history:{channel_id}"

    async def append(self, channel_id: str | int, *turns: Turn) -> None:
        """Add turns atomically, keep the newest max_turns, refresh the expiry."""
        if not turns:
            return
        key = self.key(channel_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(turn.to_json() for turn in turns))
            pipe.ltrim(key, -self.max_turns, -1)
            if self.ttl_seconds:
                pipe.expire(key, self.ttl_seconds)
            else:
                pipe.persist(key)
            await pipe.execute()

    async def recent(self, channel_id: str | int, limit: int | None = None) -> list[Turn]:
        """The newest `limit` turns (default: all kept), oldest first; malformed ones skipped."""
        limit = self.max_turns if limit is None else limit
        if not _is_int(limit) or limit < 0:
            raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}")
        if limit == 0:
            return []
        turns = []
        for raw in await self.redis.lrange(self.key(channel_id), -limit, -1):
            try:
                turns.append(Turn.from_json(raw))
            except ValueError as exc:
                log.warning("Skipping history entry in %s: %s", self.key(channel_id), exc)
        return turns

    async def clear(self, channel_id: str | int) -> int:
        """Forget the channel; return how many turns were removed."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(self.key(channel_id))
            pipe.delete(self.key(channel_id))
            count, _ = await pipe.execute()
        return int(count)

    async def count(self, channel_id: str | int) -> int:
        return int(await self.redis.llen(self.key(channel_id)))

    async def is_last(self, channel_id: str | int, turn: Turn) -> bool:
        """Whether `turn` (same JSON, timestamp included) is still the channel's newest turn."""
        return await self.redis.lindex(self.key(channel_id), -1) == turn.to_json()

    async def replace_last(self, channel_id: str | int, expected: Turn, new: Turn) -> bool:
        """Replace the channel's newest turn with `new` if it is still exactly `expected` (same
        JSON, timestamp included); False when the conversation has moved on (or was cleared).

        Atomic: WATCH makes the check and the LSET one decision, retried when another client
        changed the list in between. The expiry is refreshed as by `append`."""
        key = self.key(channel_id)
        want = expected.to_json()
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    if await pipe.lindex(key, -1) != want:
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.lset(key, -1, new.to_json())
                    if self.ttl_seconds:
                        pipe.expire(key, self.ttl_seconds)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue  # the list changed between the check and the write: look again

"""Which characters are present in which channel, who spoke last, and who wrote which message.

Stored in Redis so that a restarted bot still knows who was summoned where and can route a
reply to one of its earlier messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

MESSAGE_TTL_SECONDS = 30 * 24 * 3600  # replies to older messages are answered like mentions


@dataclass(frozen=True)
class ChannelState:
    """What routing a message needs to know about its channel."""

    present: list[str]  # character ids, in the order they were summoned
    last_speaker: str | None
    replied_to: str | None  # the character that wrote the message being replied to


class PresenceStore:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str = "charbot") -> None:
        self.redis = redis
        self.key_prefix = key_prefix

    def _key(self, kind: str, ident: str | int) -> str:
        return f"{self.key_prefix}:{kind}:{ident}"

    async def summon(self, channel_id: str | int, character_id: str) -> bool:
        """Add a character to the channel; False if it was already there."""
        added = await self.redis.zadd(
            self._key("present", channel_id), {character_id: time.time()}, nx=True
        )
        return bool(added)

    async def dismiss(self, channel_id: str | int, character_id: str) -> bool:
        """Remove a character from the channel; False if it was not there."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._key("present", channel_id), character_id)
            pipe.get(self._key("last", channel_id))
            removed, last = await pipe.execute()
        if removed and last == character_id:
            await self.redis.delete(self._key("last", channel_id))
        return bool(removed)

    async def present(self, channel_id: str | int) -> list[str]:
        """Character ids in the channel, in the order they were summoned."""
        return list(await self.redis.zrange(self._key("present", channel_id), 0, -1))

    async def spoke(self, channel_id: str | int, character_id: str, message_ids: list[int]) -> None:
        """Record that a character just spoke, and which Discord messages it wrote."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key("last", channel_id), character_id)
            for message_id in message_ids:
                pipe.set(self._key("message", message_id), character_id, ex=MESSAGE_TTL_SECONDS)
            await pipe.execute()

    async def channel_state(
        self, channel_id: str | int, reply_to_message_id: int | None = None
    ) -> ChannelState:
        """Presence, last speaker and the replied-to author in one round trip (every message
        the bot sees asks this, so it is worth the pipeline)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self._key("present", channel_id), 0, -1)
            pipe.get(self._key("last", channel_id))
            if reply_to_message_id:
                pipe.get(self._key("message", reply_to_message_id))
            present, last, *replied = await pipe.execute()
        return ChannelState(list(present), last, replied[0] if replied else None)

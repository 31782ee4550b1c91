"""Per-user cooldown and per-channel queue limit, so one busy channel cannot starve the rest."""

from __future__ import annotations

import time
from collections import defaultdict


class Cooldown:
    """At most one message per `seconds` per user; returns the seconds left to wait."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[int, float] = {}

    def retry_after(self, user_id: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        last = self._last.get(user_id)
        if last is not None and now - last < self.seconds:
            return self.seconds - (now - last)
        self._last[user_id] = now
        return 0.0


class ChannelQueue:
    """Counts replies in progress per channel; `enter` fails when the channel is at its limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: defaultdict[int, int] = defaultdict(int)

    def enter(self, channel_id: int) -> bool:
        if self._pending[channel_id] >= self.limit:
            return False
        self._pending[channel_id] += 1
        return True

    def leave(self, channel_id: int) -> None:
        self._pending[channel_id] -= 1
        if self._pending[channel_id] <= 0:
            del self._pending[channel_id]

    def depth(self, channel_id: int) -> int:
        return self._pending.get(channel_id, 0)

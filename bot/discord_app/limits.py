"""Per-user cooldown, per-channel queue limit and notice throttling, so one busy channel cannot
starve the rest and a spammer cannot make the bot spam back.

Everything here lives in memory for weeks, so every map is bounded: entries whose window has
passed are dropped as new ones arrive.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from collections.abc import Hashable


class _ExpiringMap:
    """key -> time of its last mark, oldest first; entries older than `seconds` are dropped."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._marks: OrderedDict[Hashable, float] = OrderedDict()

    def age(self, key: Hashable, now: float) -> float | None:
        mark = self._marks.get(key)
        return None if mark is None else now - mark

    def mark(self, key: Hashable, now: float) -> None:
        self._marks[key] = now
        self._marks.move_to_end(key)
        # Marks are made in time order, so expired ones are all at the front.
        while self._marks:
            oldest_key, oldest = next(iter(self._marks.items()))
            if now - oldest < self.seconds:
                break
            del self._marks[oldest_key]

    def __len__(self) -> int:
        return len(self._marks)


class Cooldown:
    """At most one accepted message per `seconds` per user.

    `retry_after` only asks; `start` records an accepted message, so a message refused for
    another reason (the channel is busy) does not use up the user's turn.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._accepted = _ExpiringMap(seconds)

    def retry_after(self, user_id: int, now: float | None = None) -> float:
        """Seconds the user must still wait (0.0: free to go)."""
        now = time.monotonic() if now is None else now
        age = self._accepted.age(user_id, now)
        if age is None or age >= self.seconds:
            return 0.0
        return self.seconds - age

    def start(self, user_id: int, now: float | None = None) -> None:
        self._accepted.mark(user_id, time.monotonic() if now is None else now)

    def __len__(self) -> int:
        return len(self._accepted)


class NoticeThrottle:
    """One notice per key (a user, a channel) per `seconds`: ten refused messages get one
    answer, not ten."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._sent = _ExpiringMap(seconds)

    def allow(self, key: Hashable, now: float | None = None) -> bool:
        """True (and remembered) if no notice went to `key` in the last `seconds`."""
        now = time.monotonic() if now is None else now
        age = self._sent.age(key, now)
        if age is not None and age < self.seconds:
            return False
        self._sent.mark(key, now)
        return True

    def __len__(self) -> int:
        return len(self._sent)


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

    def __len__(self) -> int:
        return len(self._pending)

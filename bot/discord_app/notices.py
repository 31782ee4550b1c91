"""What users are told when something outside the bot fails, and which errors mean that."""

from __future__ import annotations

from redis.exceptions import RedisError

# Redis unreachable or hung: the client's bounded timeouts end in one of these.
STORE_ERRORS = (RedisError, OSError, TimeoutError)

MEMORY_DOWN = (
    "I can't reach my memory right now (the database is not answering), so nobody can reply. "
    "It usually comes back by itself; try again in a minute."
)

"""Discord's servers, faked in memory, for the tests and the benchmarks.

The bot runs through discord.py's real code (gateway parsers, app-command tree, views); only the
network ends are replaced. It lives outside `tests/` because `bench/` drives the bot with it too.
See `discord_double.fake` for how to use it.
"""

from discord_double.fake import EPHEMERAL, FakeDiscord

__all__ = ["EPHEMERAL", "FakeDiscord"]

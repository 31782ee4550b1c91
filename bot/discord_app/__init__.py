"""The Discord front end: the Bot subclass and what cogs share (sending as a character, limits)."""

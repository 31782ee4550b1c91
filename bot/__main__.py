"""Entry points: `python -m bot` (Discord if DISCORD_TOKEN is set, else console), `console`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from pathlib import Path

from bot.characters import CharacterError
from bot.config import ConfigError, load_config
from bot.redis_connection import RedisUnavailable

log = logging.getLogger("bot")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # Library chatter (progress bars, optional-kernel notices) is noise for a chat user.
        for name in ("transformers", "bitsandbytes", "peft", "accelerate", "httpx"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="transformers|bitsandbytes|peft")
        import transformers

        transformers.utils.logging.disable_progress_bar()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Character chat bot. With no command: the Discord bot when DISCORD_TOKEN is "
        "set (environment or .env), otherwise the console chat.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    console = sub.add_parser("console", help="chat in the terminal (also reads piped input)")
    console.add_argument("character", nargs="?", help="character id, name or alias")
    console.add_argument("--name", default="User", help="your name in the chat (default: User)")
    sub.add_parser("discord", help="run the Discord bot (needs DISCORD_TOKEN)")
    sync = sub.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument(
        "--guild", type=int, help="a server id: commands appear there at once (else globally)"
    )
    return parser.parse_args(argv)


async def run_console(
    character_name: str | None,
    user_name: str,
    *,
    adapter: Path | None = None,
    channel_id: str = "console",
) -> None:
    """The console chat; `adapter` serves the character with that adapter folder instead."""
    # Imported after logging is set up: torch/bitsandbytes log at import time.
    from bot.console import Console
    from bot.services import open_services

    config = load_config()
    services = await open_services(config)
    try:
        character = services.registry.get(character_name or config.default_character)
        if adapter is not None:
            await services.batcher.run(services.engine.load_adapter, character.id, adapter)
            log.info("%s speaks with the adapter in %s", character.name, adapter)
        await Console(services, character, user_name=user_name, channel_id=channel_id).run()
    finally:
        await services.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from bot.engine.loading import ModelLoadError

    try:
        config = load_config()
        command = args.command or ("discord" if config.discord_token else "console")
        if command in ("discord", "sync") and not config.discord_token:
            raise ConfigError("DISCORD_TOKEN is not set (environment or .env)")
        if command == "discord":
            from bot.discord_app.client import run_bot

            asyncio.run(run_bot(config))
            return 0
        if command == "sync":
            from bot.discord_app.client import sync_commands

            count = asyncio.run(sync_commands(config, args.guild))
            where = f"server {args.guild}" if args.guild else "all servers (may take up to an hour)"
            print(f"Synced {count} slash commands to {where}.")
            return 0
        if args.command is None:
            log.info("No DISCORD_TOKEN set: starting the console chat")
        asyncio.run(run_console(getattr(args, "character", None), getattr(args, "name", "User")))
    except (ConfigError, CharacterError, ModelLoadError, RedisUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

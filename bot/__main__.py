"""Entry points: `python -m bot` (Discord if DISCORD_TOKEN is set, else console), `console`,
`worker` (a model worker for `backend.mode: worker`), `sync`.

A failure to start is one line on stderr, `error: ...`, and an exit code a script can act on:

    0    done (or the bot was shut down)
    2    configuration: config.yaml, .env or the environment, a character card, the model,
         Redis
    3    Discord refused the bot token (DISCORD_TOKEN)
    4    Discord could not be reached (network, DNS, firewall, proxy, timeout)
    5    Discord answered with an error (HTTP 4xx/5xx, e.g. an outage or missing access)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import socket
import sys
from urllib.parse import urlsplit

from bot.characters import CharacterError
from bot.config import Config, ConfigError, load_config
from bot.log_redaction import install_redaction, redact
from bot.logging_setup import setup_logging
from bot.redis_connection import RedisUnavailable

log = logging.getLogger("bot")

EXIT_CONFIG = 2
EXIT_LOGIN_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_DISCORD_ERROR = 5
EXIT_INTERRUPTED = 130

DISCORD_COMMANDS = ("discord", "sync")
DISCORD_STATUS = "https://discordstatus.com"
# OSErrors that mean the network, not the disk: refused, reset, unreachable, timed out.
NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ETIMEDOUT,
    }
)


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
    worker = sub.add_parser(
        "worker",
        help="serve the model to bots in backend.mode worker (one process per GPU)",
        description="Load the base model and every character's adapter, then answer the jobs "
        "bots put on Redis (REDIS_URL) until stopped.",
    )
    worker.add_argument("--name", help="worker name in /status (default: host-pid)")
    sync = sub.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument(
        "--guild", type=int, help="a server id: commands appear there at once (else globally)"
    )
    return parser.parse_args(argv)


def config_secrets(config: Config) -> list[str]:
    """The configured secrets the log must never show: the bot token, the Redis password."""
    secrets = [config.discord_token or ""]
    if config.redis_url:
        # A malformed URL has no password to take; Redis reports the URL itself.
        with contextlib.suppress(ValueError):
            secrets.append(urlsplit(config.redis_url).password or "")
    return secrets


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from or while handling (run_bot rewraps LoginFailure)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text[:300])


def describe_discord_failure(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one line for a failure to log in to or reach Discord, else None."""
    import aiohttp
    import discord

    # Looked for along the chain: the bot's runner turns LoginFailure into a ConfigError.
    for cause in _causes(exc):
        if isinstance(cause, discord.LoginFailure) or (
            isinstance(cause, discord.ConnectionClosed) and cause.code == 4004
        ):
            return EXIT_LOGIN_REFUSED, (
                "Discord refused the bot token: check that DISCORD_TOKEN (environment or .env) "
                "holds the bot's current token from the developer portal (Bot > Reset Token)"
            )
    # The rest only as raised: a ConfigError or ModelLoadError may wrap an unrelated OSError.
    if isinstance(exc, discord.HTTPException | aiohttp.ClientResponseError):
        if exc.status >= 500:
            hint = f"Discord is having trouble, try again later (see {DISCORD_STATUS})"
        else:
            hint = "check the bot's permissions and that it is in the server"
        return EXIT_DISCORD_ERROR, f"Discord answered with an error ({_one_line(exc)}): {hint}"
    if isinstance(exc, discord.GatewayNotFound | discord.ConnectionClosed):
        return EXIT_DISCORD_ERROR, (
            f"Discord's gateway failed ({_one_line(exc)}): try again later (see {DISCORD_STATUS})"
        )
    network_os_error = isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS
    if network_os_error or isinstance(
        exc, aiohttp.ClientError | ConnectionError | TimeoutError | socket.gaierror
    ):
        return EXIT_UNREACHABLE, (
            f"cannot reach Discord ({_one_line(exc)}): check the network connection, DNS, "
            f"firewall or proxy settings, and {DISCORD_STATUS}"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from bot.engine.loading import ModelLoadError

    startup_errors = (ConfigError, CharacterError, ModelLoadError, RedisUnavailable)
    command = args.command
    try:
        config = load_config()
        install_redaction(config_secrets(config))
        command = args.command or ("discord" if config.discord_token else "console")
        if command in DISCORD_COMMANDS and not config.discord_token:
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
        if command == "worker":
            from bot.generation.worker import run_worker

            asyncio.run(run_worker(config, args.name))
            return 0
        if args.command is None:
            log.info("No DISCORD_TOKEN set: starting the console chat")
        # Imported after logging is set up: torch/bitsandbytes log at import time.
        from bot.console import run_console

        asyncio.run(run_console(getattr(args, "character", None), getattr(args, "name", "User")))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        # Only the Discord commands talk to Discord; elsewhere an OSError is not the network.
        failure = describe_discord_failure(exc) if command in DISCORD_COMMANDS else None
        if failure is None and isinstance(exc, startup_errors):
            failure = EXIT_CONFIG, str(exc)
        if failure is None:
            raise  # anything else is a bug, and its traceback is what a developer needs
        code, message = failure
        print(f"error: {redact(message)}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Keep secrets out of the log: a filter on the root logger's handlers rewrites every record.

With `-v`, discord.py logs request URLs and gateway payloads at DEBUG, and those carry webhook
tokens (`/webhooks/<id>/<token>`), interaction tokens (`/interactions/<id>/<token>/callback`,
`'token': '...'` in INTERACTION_CREATE events) and could carry the bot token. The filter sits on
handlers, not loggers, because a logger's filters do not see records from its child loggers,
while a handler sees every record it writes, from any library and at any level.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "***"
# Shorter registered secrets would blank ordinary words; the patterns still catch them in URLs.
MIN_SECRET_LENGTH = 6

# Each pattern keeps group 1 (the context) and replaces the secret after it.
_PATTERNS: tuple[re.Pattern[str], ...] = (
    # Webhook and interaction URLs: /webhooks/<id>/<token>, /interactions/<id>/<token>/callback.
    re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?#'\"]+"),
    # An Authorization header's value, in a dict repr, JSON or `Authorization: Bot ...`.
    re.compile(
        r"(\bAuthorization['\"]?\s*[:=]\s*['\"]?(?:(?:Bot|Bearer)\s+)?)[^\s'\",}]+", re.IGNORECASE
    ),
    re.compile(r"(\b(?:Bot|Bearer) )[\w-]{20,}(?:\.[\w-]+)*"),
    # A token as a query parameter or a payload key: ?token=..., 'token': '...', "token": "...".
    re.compile(r"(\b\w*token=)[^&\s#'\"]+", re.IGNORECASE),
    re.compile(r"(['\"]\w*token['\"]\s*:\s*['\"])[^'\"]+", re.IGNORECASE),
    # A password in a URL's user info: redis://user:password@host (also proxies).
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)", re.IGNORECASE),
)
# A Discord bot token anywhere: base64url user id, timestamp, HMAC, joined by dots.
_BOT_TOKEN = re.compile(r"(?<![\w-])[\w-]{23,}\.[\w-]{6,7}\.[\w-]{27,}(?![\w-])")


class SecretRedactingFilter(logging.Filter):
    """Replaces tokens, passwords and registered secrets in a record's message and traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str | None]) -> None:
        """Also hide these exact strings (a configured token or password), wherever they appear."""
        self._secrets.update(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)

    def redact(self, text: str) -> str:
        # Longest first, so a secret that contains another is hidden whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m[1] + REDACTED, text)
        return _BOT_TOKEN.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging itself reports it when formatting
            return True
        # The final text replaces msg and args, so no handler can format the secret back in.
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            # Formatter.format uses a cached exc_text as is; format it here to redact it.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


_filter = SecretRedactingFilter()


def install_redaction(secrets: Iterable[str | None] = ()) -> None:
    """Put the filter on every handler of the root logger (once each) and hide `secrets` too.

    Call it after the handlers exist (after `logging.basicConfig`); calling it again with the
    configured secrets adds them, and covers handlers added since.
    """
    _filter.add_secrets(secrets)
    for handler in logging.getLogger().handlers:
        if _filter not in handler.filters:
            handler.addFilter(_filter)


def redact(text: str) -> str:
    """`text` with the known patterns and the installed secrets hidden (for printed errors)."""
    return _filter.redact(text)

"""Logging for every entry point (`python -m bot`, `python -m finetune`): format, levels, and
the redaction filter that keeps secrets out of every log line."""

from __future__ import annotations

import logging
import sys
import warnings

from bot.log_redaction import install_redaction


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Before any library logs: with -v, discord.py logs webhook and interaction tokens.
    install_redaction()
    if not verbose:
        # Library chatter (progress bars, optional-kernel notices) is noise for a chat user.
        for name in ("transformers", "bitsandbytes", "peft", "accelerate", "httpx"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="transformers|bitsandbytes|peft")
        import transformers

        transformers.utils.logging.disable_progress_bar()

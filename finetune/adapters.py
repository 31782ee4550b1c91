"""Creating LoRA adapters in peft's folder format."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")


def save_random_adapter(
    base_model: Any,
    path: Path,
    *,
    seed: int,
    r: int = 8,
    alpha: int = 16,
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES,
) -> Path:
    """Save an untrained LoRA adapter with random (non-zero) weights, for benchmarks and tests.

    peft's default init makes B zero (the adapter is a no-op); `init_lora_weights=False` makes it
    change outputs, so different adapters really give different generations.
    """
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    # Wrap a copy: get_peft_model injects layers in place and the caller keeps serving the base.
    peft_model = get_peft_model(copy.deepcopy(base_model), config)
    peft_model.save_pretrained(str(path))
    return path

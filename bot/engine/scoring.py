"""Scoring text: how likely each continuation is after its prompt, many rows in one pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bot.engine.rows import batch_inputs, cached_length, plan_prefix, positions


@torch.inference_mode()
def continuation_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    adapter_names: Sequence[str] | None,
    pad_id: int,
    device: str,
    min_shared_prefix: int,
) -> list[float]:
    """Summed log-probability of each continuation's tokens after its prompt, under the row's
    adapter (`adapter_names`; None: a model without adapters). Prompts under one adapter that
    start alike (candidates for one message) run their common start once."""
    rows = [[*p, *c] for p, c in zip(prompts, continuations, strict=True)]
    names = list(adapter_names) if adapter_names is not None else ["base"] * len(rows)
    # Only prompt tokens may be shared: each continuation's predictions must be computed here.
    plan = plan_prefix(prompts, names, min_shared_prefix)
    inputs = batch_inputs(
        model, rows, pad_id=pad_id, device=device, plan=plan, adapter_names=adapter_names
    )
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    feed = ids[:, cached_length(inputs) :]
    keep = max(map(len, continuations)) + 1
    extra = {"adapter_names": list(adapter_names)} if adapter_names is not None else {}
    out = model(
        input_ids=feed,
        attention_mask=mask,
        position_ids=positions(mask)[:, -feed.shape[1] :],
        past_key_values=inputs.get("past_key_values"),
        logits_to_keep=keep,
        **extra,
    )
    logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # rows x keep x vocab
    sums = []
    for row, continuation in enumerate(continuations):
        count = len(continuation)
        if count == 0:
            sums.append(0.0)
            continue
        # Left padding puts every continuation at the right end: position j predicts j + 1.
        predicted = logprobs[row, keep - 1 - count : keep - 1]
        targets = ids[row, -count:]
        sums.append(float(predicted.gather(1, targets[:, None]).sum()))
    return sums

"""Persona guidance: classifier-free guidance on the card, decoded in one batch.

Each request is two rows of the same batch: cond (the prompt with the card, under the
character's adapter) and bare (the same conversation with no card, on the base model). At each
step both rows run in one forward pass and the next-token log-probabilities become

    bare + g * (cond - bare)

(Sanchez et al. 2023, "Stay on topic with Classifier-Free Guidance"); the token chosen from them
is appended to both rows. transformers' own `guidance_scale` runs the unconditional model
outside the batch and with one adapter, so this is a small decode loop of its own: mixed
adapters (per-row `adapter_names`) and the shared card prefix (`rows.plan_prefix`) work as in
the engine's other batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from bot.engine.rows import batch_inputs, cached_length, plan_prefix, positions
from bot.generation.request import SamplingSettings


def guided_logprobs(cond: torch.Tensor, bare: torch.Tensor, guidance: float) -> torch.Tensor:
    """The guided next-token log-probabilities from both rows' logits."""
    cond = torch.log_softmax(cond.float(), dim=-1)
    bare = torch.log_softmax(bare.float(), dim=-1)
    return bare + guidance * (cond - bare)


def _processors(settings: SamplingSettings) -> LogitsProcessorList:
    """transformers' own processors, in the order its generate applies them."""
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.temperature > 0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
    return processors


@torch.inference_mode()
def guided_generate(
    model: Any,
    cond_rows: Sequence[Sequence[int]],
    bare_rows: Sequence[Sequence[int]],
    *,
    settings: SamplingSettings,
    adapter_names: Sequence[str] | None,
    base_name: str,
    stop_ids: set[int],
    pad_id: int,
    device: str,
    min_shared_prefix: int,
    on_tokens: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The new tokens of each cond row (n x steps; rows that stopped early continue with pad).

    `adapter_names`: the cond rows' peft adapter names (None: a model without adapters); bare
    rows run as `base_name`. `on_tokens` gets each step's tokens (for streaming).
    """
    n = len(cond_rows)
    rows = [*cond_rows, *bare_rows]
    names = [*adapter_names, *[base_name] * n] if adapter_names is not None else None
    plan = plan_prefix(rows, names or ["base"] * len(rows), min_shared_prefix)
    inputs = batch_inputs(model, rows, pad_id=pad_id, device=device, plan=plan, adapter_names=names)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cache = inputs.get("past_key_values")
    feed = ids[:, cached_length(inputs) :]
    extra = {"adapter_names": names} if names is not None else {}
    processors = _processors(settings)
    # The penalty counts each row's own tokens: padding and masked prefix slots are not text.
    seen = torch.where(mask[:n].bool(), ids[:n], ids[:n, -1:])
    stops = torch.tensor(sorted(stop_ids), device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    steps = []
    for _ in range(settings.max_new_tokens):
        out = model(
            input_ids=feed,
            attention_mask=mask,
            position_ids=positions(mask)[:, -feed.shape[1] :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1]
        guided = guided_logprobs(logits[:n], logits[n:], settings.persona_guidance)
        scores = processors(seen, guided)
        if settings.temperature > 0:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
        else:
            token = scores.argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        steps.append(token)
        if on_tokens is not None:
            on_tokens(token)
        done |= torch.isin(token, stops)
        if bool(done.all()):
            break
        seen = torch.cat([seen, token[:, None]], 1)
        feed = token.repeat(2)[:, None]  # the same token continues the cond and the bare row
        mask = torch.cat([mask, torch.ones(2 * n, 1, dtype=mask.dtype, device=device)], 1)
    return torch.stack(steps, 1)

"""Laying out token rows for one batched forward pass: left padding, and a prefix that several
rows share (one character's card) run once for all of them.

Every row is laid out as prefix slots, padding, its own tokens. Rows that share the prefix see
it (mask 1); the other rows' prefix slots are masked out, so they see only their own tokens.
Positions come from the mask, so every row sees exactly its own prompt at its own positions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MIN_SHARED_PREFIX = 32


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own (the model
    must be fed something to predict the first new token)."""
    limit = min(len(r) for r in rows) - 1
    length = 0
    while length < limit and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return length


@dataclass(frozen=True)
class PrefixPlan:
    """Which rows run their first `length` tokens as one shared prefix (all under one adapter)."""

    rows: tuple[int, ...]
    length: int


def plan_prefix(
    rows: Sequence[Sequence[int]], adapter_names: Sequence[str], min_shared: int
) -> PrefixPlan | None:
    """The rows under one adapter that save the most tokens by sharing their common start, if
    they share at least `min_shared` (`rows` may be cut to the part allowed to be shared)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(adapter_names):
        groups[name].append(index)
    best: PrefixPlan | None = None
    for members in groups.values():
        if len(members) < 2:
            continue
        length = shared_prefix_length([rows[i] for i in members])
        saved = length * (len(members) - 1)
        if length >= min_shared and (best is None or saved > best.length * (len(best.rows) - 1)):
            best = PrefixPlan(tuple(members), length)
    return best


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids from a left-padded mask (as transformers' generate derives them)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def batch_inputs(
    model: Any,
    rows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: str,
    plan: PrefixPlan | None = None,
    adapter_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """input_ids and attention_mask for `rows` (full rows: prefix, padding, own tokens), and
    past_key_values holding the planned prefix, run once under its rows' adapter.

    `adapter_names`: peft's per-row adapter names, None for a model without adapters.
    """
    shared = plan.length if plan else 0
    sharing = set(plan.rows) if plan else set()
    own = [list(r[shared:]) if i in sharing else list(r) for i, r in enumerate(rows)]
    width = max(map(len, own))
    ids, mask = [], []
    prefix = list(rows[plan.rows[0]][:shared]) if plan else []
    for i, tokens in enumerate(own):
        sees_prefix = i in sharing
        pad = width - len(tokens)
        ids.append((prefix if sees_prefix else [pad_id] * shared) + [pad_id] * pad + tokens)
        mask.append([int(sees_prefix)] * shared + [0] * pad + [1] * len(tokens))
    inputs: dict[str, Any] = {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }
    if plan:
        extra = {"adapter_names": [adapter_names[plan.rows[0]]]} if adapter_names else {}
        prefix_ids = torch.tensor([prefix], device=device)
        cache = model(input_ids=prefix_ids, use_cache=True, **extra).past_key_values
        # Every row gets the prefix's cache; rows outside the plan have it masked out.
        cache.batch_repeat_interleave(len(rows))
        inputs["past_key_values"] = cache
    return inputs


def cached_length(inputs: dict[str, Any]) -> int:
    """Tokens of `inputs` already in its cache (the shared prefix), not to be fed again."""
    cache = inputs.get("past_key_values")
    return 0 if cache is None else cache.get_seq_length()

"""Loss of a model on encoded examples: batches, shared card prefixes, per-token losses.

Used by training (`finetune.train`) and by evaluation (`finetune.evaluate`).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from finetune.examples import IGNORE, EncodedExample
from finetune.recipe import Recipe

if TYPE_CHECKING:
    from bot.engine import InferenceEngine

# -- batches -----------------------------------------------------------------------------------


def make_batches(
    examples: list[EncodedExample], batch_size: int, seed: int, *, by_prefix: bool = True
) -> list[list[EncodedExample]]:
    """One epoch of batches: shuffled, each batch sharing one prefix (so it is computed once);
    without `by_prefix` (prefixes are not shared), any examples may share a batch."""
    rng = random.Random(seed)
    groups: dict[tuple[int, ...], list[EncodedExample]] = defaultdict(list)
    for example in examples:
        groups[example.prefix if by_prefix else ()].append(example)
    batches = []
    for members in groups.values():
        members = list(members)
        rng.shuffle(members)
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class PrefixState:
    """The shared card prefix run through the model: per-layer keys/values and last hidden."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    last_hidden: torch.Tensor  # (1, 1, hidden)
    step: int  # the optimizer step it was computed at


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def encode_prefix(model: Any, prefix: tuple[int, ...], *, device: str, step: int) -> PrefixState:
    """Run the prefix as at inference (no dropout) and without gradient."""
    decoder, _ = _decoder_and_head(model)
    training = model.training
    model.eval()
    with torch.no_grad():
        out = decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    model.train(training)
    layers = [(keys, values) for keys, values, *_ in out.past_key_values]
    return PrefixState(layers, out.last_hidden_state[:, -1:, :], step)


class PrefixCache:
    """Shared prefixes run through the model once, and again when `refresh_every` steps old."""

    def __init__(self, model: Any, *, device: str, refresh_every: float = math.inf) -> None:
        self.model = model
        self.device = device
        self.refresh_every = refresh_every
        self._states: dict[tuple[int, ...], PrefixState] = {}

    def get(self, batch: list[EncodedExample], step: int = 0) -> PrefixState | None:
        key = batch[0].prefix
        if not key:
            return None
        state = self._states.get(key)
        if state is None or step - state.step >= self.refresh_every:
            state = encode_prefix(self.model, key, device=self.device, step=step)
            self._states[key] = state
        return state


def batch_loss(
    model: Any,
    batch: list[EncodedExample],
    *,
    share_prefix: bool,
    device: str,
    prefix_state: PrefixState | None = None,
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's target tokens, and how many there were."""
    losses, _ = token_losses(
        model, batch, share_prefix=share_prefix, device=device, prefix_state=prefix_state
    )
    return losses.sum(), losses.numel()


def token_losses(
    model: Any,
    batch: list[EncodedExample],
    *,
    share_prefix: bool,
    device: str,
    prefix_state: PrefixState | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every target token of the batch, and the row each one belongs to.

    With `share_prefix`, the batch's common prefix is run once (or taken from `prefix_state`)
    and its keys/values are shared by every row.
    """
    logits, targets, rows = target_logits(
        model, batch, share_prefix=share_prefix, device=device, prefix_state=prefix_state
    )
    return F.cross_entropy(logits, targets, reduction="none"), rows


def target_logits(
    model: Any,
    batch: list[EncodedExample],
    *,
    share_prefix: bool,
    device: str,
    prefix_state: PrefixState | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits (float32) that predict each target token of the batch, the target tokens, and
    the row each one belongs to; `share_prefix` as in `token_losses`."""
    prefix = batch[0].prefix if share_prefix else ()
    rows = [list(e.body) if share_prefix else list(e.prefix + e.body) for e in batch]
    labels = [e.labels if share_prefix else [IGNORE] * len(e.prefix) + e.labels for e in batch]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    label_ids = torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels], device=device)
    lengths = torch.tensor([len(r) for r in rows])
    body_mask = (torch.arange(width)[None, :] < lengths[:, None]).long().to(device)
    decoder, head = _decoder_and_head(model)
    if prefix:
        state = prefix_state or encode_prefix(model, prefix, device=device, step=0)
        n = len(batch)
        cache = DynamicCache(
            [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in state.layers]
        )
        ones = torch.ones(n, len(prefix), dtype=torch.long, device=device)
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=torch.cat([ones, body_mask], 1),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        # The prefix's last position predicts the body's first token.
        first = state.last_hidden.expand(n, 1, -1).to(hidden.dtype)
        hidden, targets = torch.cat([first, hidden[:, :-1]], 1), label_ids
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=body_mask).last_hidden_state
        hidden, targets = hidden[:, :-1], label_ids[:, 1:]
    # The vocabulary projection only where there is a target: most positions are prompt.
    keep = targets != IGNORE
    row_of = torch.arange(len(batch), device=device)[:, None].expand_as(keep)[keep]
    return head(hidden[keep]).float(), targets[keep], row_of


@torch.no_grad()
def _eval_batches(
    model: Any, examples: list[EncodedExample], recipe: Recipe, device: str
) -> Iterator[tuple[list[EncodedExample], torch.Tensor, torch.Tensor]]:
    """(batch, its target tokens' losses, the row of each) for every batch, in eval mode."""
    training = model.training
    model.eval()
    prefixes = PrefixCache(model, device=device)  # exact: computed with today's weights
    try:
        for batch in make_batches(examples, recipe.batch_size, 0, by_prefix=recipe.share_prefix):
            losses, rows = token_losses(
                model,
                batch,
                share_prefix=recipe.share_prefix,
                device=device,
                prefix_state=prefixes.get(batch) if recipe.share_prefix else None,
            )
            yield batch, losses, rows
    finally:
        model.train(training)


def evaluate(model: Any, examples: list[EncodedExample], recipe: Recipe, device: str) -> float:
    """Mean loss per target token over `examples` (nan when there are none)."""
    if not examples:
        return math.nan
    total, count = 0.0, 0
    for _, losses, _ in _eval_batches(model, examples, recipe, device):
        total, count = total + float(losses.sum()), count + losses.numel()
    return total / max(count, 1)


def example_losses(
    model: Any, examples: list[EncodedExample], recipe: Recipe, device: str
) -> list[float]:
    """Mean loss per target token of each example, in the order given."""
    index = {id(e): i for i, e in enumerate(examples)}
    result = [math.nan] * len(examples)
    for batch, losses, rows in _eval_batches(model, examples, recipe, device):
        sums = torch.zeros(len(batch)).index_add_(0, rows.cpu(), losses.cpu())
        counts = torch.bincount(rows.cpu(), minlength=len(batch)).clamp(min=1)
        for example, mean in zip(batch, (sums / counts).tolist(), strict=True):
            result[index[id(example)]] = mean
    return result


def perplexity_under(
    engine: InferenceEngine, adapter: str | None, examples: list[EncodedExample], batch_size: int
) -> float:
    """exp of the mean target-token loss of `examples` through `adapter` (None: the base)."""
    with engine.using_adapter(adapter) as model:
        loss = evaluate(model, examples, Recipe(batch_size=batch_size), engine.device)
    return math.exp(loss)

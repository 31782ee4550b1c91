"""DPO's anchor on ordinary dialogue: the KL divergence from the reference adapter on
conversation that is not a preference pair (the recipe's `anchor_weight`; shared-prefix loop).

A mend pair's rejected reply is the adapter's own likeliest answer, and the chosen one differs
from it in a few words. DPO lowers the rejected reply, and the probability it takes away goes
wherever the loss does not look: on Goku, general dialogue (the report's SPC damage guard) got
13-27% less likely with every mend-pair recipe, and an SFT term on the chosen replies did not
give it back. The anchor holds the adapter's next-token distributions on other conversation
where the reference (the adapter DPO starts from) had them: KL(reference || adapter) per reply
token, over the reference's `TOP_K` likeliest tokens and one bin for all the rest. The
conversation is Synthetic-Persona-Chat training turns (rows the report never scores), each with
its own persona as the card, as the damage guard prompts them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from finetune.examples import EncodedExample
from finetune.losses import target_logits

TOP_K = 64  # the reference's likeliest tokens kept per position; the rest is one bin
LOG_FLOOR = -1e4  # exp() of it is 0 in float32


@dataclass(frozen=True)
class AnchorBatch:
    """Anchor examples and the reference's distribution at each of their reply tokens."""

    examples: list[EncodedExample]
    top_ids: torch.Tensor  # (tokens, k) the reference's likeliest tokens
    top_logps: torch.Tensor  # (tokens, k) their log-probabilities
    rest_logp: torch.Tensor  # (tokens,) log-probability of every other token together


def _top_and_rest(logps: torch.Tensor, top_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities at `top_ids`, and of all other tokens together (exact, no 1 - sum);
    floored, so a probability of 0 adds 0 to the KL, not 0 x -inf."""
    rest = logps.scatter(-1, top_ids, float("-inf")).logsumexp(-1)
    return logps.gather(-1, top_ids).clamp(min=LOG_FLOOR), rest.clamp(min=LOG_FLOOR)


@torch.no_grad()
def reference_batches(
    model: Any,
    examples: Sequence[EncodedExample],
    *,
    batch_size: int,
    device: str,
    top_k: int = TOP_K,
) -> list[AnchorBatch]:
    """The examples in batches, with the model's (the reference's) distributions as it is now."""
    training = model.training
    model.eval()
    batches = []
    for start in range(0, len(examples), batch_size):
        batch = list(examples[start : start + batch_size])
        logits, _, _ = target_logits(model, batch, share_prefix=False, device=device)
        logps = F.log_softmax(logits, dim=-1)
        top_ids = logps.topk(min(top_k, logps.shape[-1]), dim=-1).indices
        top_logps, rest = _top_and_rest(logps, top_ids)
        batches.append(AnchorBatch(batch, top_ids, top_logps, rest))
    model.train(training)
    return batches


def anchor_kl(model: Any, batch: AnchorBatch, *, device: str) -> torch.Tensor:
    """Mean KL(reference || model) per reply token of the batch, over the reference's top
    tokens and the rest bin."""
    logits, _, _ = target_logits(model, batch.examples, share_prefix=False, device=device)
    top, rest = _top_and_rest(F.log_softmax(logits, dim=-1), batch.top_ids)
    kl = (batch.top_logps.exp() * (batch.top_logps - top)).sum(-1)
    kl = kl + batch.rest_logp.exp() * (batch.rest_logp - rest)
    return kl.mean()


def cycle(batches: list[AnchorBatch]) -> Iterator[AnchorBatch]:
    """The batches in order, over and over (one per DPO micro-batch)."""
    while True:
        yield from batches

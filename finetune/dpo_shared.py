"""DPO with the card prefix run once: the project's own loop, for CPUs (`share_prefix: true`).

trl's `DPOTrainer` runs every pair as two full sequences (the ~900-token card each time) through
the trained adapter and through the reference. Every pair of a character starts with the same
card, so here that prefix is run once per optimizer step without gradient (as SFT's
`share_prefix` does), the reference log-probabilities (the adapter DPO starts from) are computed
once before training, and only the message and the two replies go through the model with
gradient. The loss is trl's: DPO's sigmoid loss, plus `sft_weight` times the chosen replies'
mean NLL per token; with `anchor_weight`, plus that times the KL from the reference on ordinary
dialogue (finetune/dpo_anchor.py), which trl has no counterpart of.
What differs from trl: no gradient reaches the adapter through the prefix's keys and values
(the log-probabilities themselves are exact: the prefix is recomputed with the current weights
every step).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import get_scheduler

from finetune.dpo_anchor import anchor_kl, cycle, reference_batches
from finetune.examples import EncodedExample, completion_text, token_ids
from finetune.losses import PrefixCache, token_losses
from finetune.preference_data import PreferencePair
from finetune.recipe import DpoRecipe


@dataclass(frozen=True)
class EncodedPair:
    chosen: EncodedExample
    rejected: EncodedExample
    reference: tuple[float, float] = (math.nan, math.nan)  # log p(chosen), log p(rejected)
    sft: bool = True  # whether the chosen reply gets the recipe's SFT term


def common_prefix(sequences: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The longest run of tokens every sequence starts with."""
    if not sequences:
        return ()
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for other in sequences[1:]:
        length = next((i for i in range(length) if other[i] != first[i]), length)
    return tuple(first[:length])


def encode_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer: Any,
    max_seq_len: int,
    sft_sources: Sequence[str] | None = None,
) -> tuple[list[EncodedPair], int]:
    """Token ids of each pair's two rows (prompt + reply and its end of turn), all sharing the
    prompts' common prefix (the card); and how many pairs were longer than `max_seq_len`.
    Pairs of `sft_sources` (None: all) get the SFT term."""
    prompts = [token_ids(tokenizer, pair.prompt) for pair in pairs]
    # Keep one prompt token out of the prefix: a row's body is never only its reply.
    prefix = common_prefix([ids[:-1] for ids in prompts])
    encoded, skipped = [], 0
    for n, (pair, ids) in enumerate(zip(pairs, prompts, strict=True)):
        rows = []
        for kind, reply in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            target = token_ids(tokenizer, completion_text(tokenizer, reply))
            body = tuple(ids[len(prefix) :] + target)
            rows.append(EncodedExample(f"{n}:{kind}", prefix, body, len(target)))
        if max(len(row) for row in rows) > max_seq_len:
            skipped += 1
            continue
        sft = sft_sources is None or pair.source in sft_sources
        encoded.append(EncodedPair(rows[0], rows[1], sft=sft))
    return encoded, skipped


def sequence_logps(
    model: Any, rows: list[EncodedExample], *, device: str, prefixes: PrefixCache, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's reply tokens, and how many tokens each has."""
    losses, row_of = token_losses(
        model, rows, share_prefix=True, device=device, prefix_state=prefixes.get(rows, step)
    )
    sums = torch.zeros(len(rows), device=device, dtype=losses.dtype).index_add(0, row_of, -losses)
    return sums, torch.bincount(row_of, minlength=len(rows))


def _rows(batch: Sequence[EncodedPair]) -> list[EncodedExample]:
    return [p.chosen for p in batch] + [p.rejected for p in batch]


def pair_loss(
    batch: Sequence[EncodedPair],
    logps: torch.Tensor,
    counts: torch.Tensor,
    recipe: DpoRecipe,
) -> tuple[torch.Tensor, dict[str, float]]:
    """trl's loss for the batch (mean DPO sigmoid loss + sft_weight x chosen NLL per token, over
    the pairs that take the SFT term), and its figures under trl's names."""
    n = len(batch)
    chosen, rejected = logps[:n], logps[n:]
    reference = torch.tensor([p.reference for p in batch], dtype=logps.dtype, device=logps.device)
    reward_chosen = recipe.beta * (chosen - reference[:, 0])
    reward_rejected = recipe.beta * (rejected - reference[:, 1])
    dpo = -F.logsigmoid(reward_chosen - reward_rejected)
    loss = dpo.mean()
    anchored = torch.tensor([p.sft for p in batch], device=logps.device)
    if recipe.sft_weight and anchored.any():
        nll = -chosen[anchored].sum() / counts[:n][anchored].sum().clamp(min=1)
        loss = loss + recipe.sft_weight * nll
    margin = (reward_chosen - reward_rejected).detach()
    figures = {
        "dpo_loss": dpo.detach().mean().item(),
        "rewards/margins": margin.mean().item(),
        "rewards/accuracies": (margin > 0).float().mean().item(),
    }
    return loss, figures


@torch.no_grad()
def with_reference(
    model: Any, pairs: list[EncodedPair], *, device: str, batch_size: int
) -> list[EncodedPair]:
    """The pairs with the log-probabilities of their replies under the model as it is now."""
    training = model.training
    model.eval()
    prefixes = PrefixCache(model, device=device)
    done = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        logps, _ = sequence_logps(model, _rows(batch), device=device, prefixes=prefixes, step=0)
        n = len(batch)
        for pair, c, r in zip(batch, logps[:n].tolist(), logps[n:].tolist(), strict=True):
            done.append(dataclasses.replace(pair, reference=(c, r)))
    model.train(training)
    return done


@torch.no_grad()
def evaluate_pairs(
    model: Any, pairs: list[EncodedPair], recipe: DpoRecipe, device: str
) -> dict[str, float]:
    """Mean loss, reward margin and reward accuracy over held-out pairs (trl's names)."""
    if not pairs:
        return {}
    training = model.training
    model.eval()
    prefixes = PrefixCache(model, device=device)
    totals: dict[str, float] = {"loss": 0.0, "rewards/margins": 0.0, "rewards/accuracies": 0.0}
    for start in range(0, len(pairs), recipe.batch_size):
        batch = pairs[start : start + recipe.batch_size]
        logps, counts = sequence_logps(
            model, _rows(batch), device=device, prefixes=prefixes, step=0
        )
        loss, figures = pair_loss(batch, logps, counts, recipe)
        totals["loss"] += float(loss) * len(batch)
        totals["rewards/margins"] += figures["rewards/margins"] * len(batch)
        totals["rewards/accuracies"] += figures["rewards/accuracies"] * len(batch)
    model.train(training)
    return {key: value / len(pairs) for key, value in totals.items()}


def _micro_batches(pairs: list[EncodedPair], recipe: DpoRecipe) -> Iterator[list[EncodedPair]]:
    epoch = 0
    while True:
        order = list(pairs)
        random.Random(recipe.seed + epoch).shuffle(order)
        for start in range(0, len(order), recipe.batch_size):
            yield order[start : start + recipe.batch_size]
        epoch += 1


@dataclass
class LoopResult:
    steps: int
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    pairs_per_second: float
    loop_seconds: float
    curve: list[dict[str, float]]


def train_shared_prefix(
    model: Any,
    train_pairs: list[EncodedPair],
    eval_pairs: list[EncodedPair],
    recipe: DpoRecipe,
    *,
    device: str,
    anchor: Sequence[EncodedExample] = (),
    progress: bool = True,
) -> LoopResult:
    """DPO of the model's trainable adapter on encoded pairs; the reference is the adapter as
    it is when this starts. With `recipe.anchor_weight`, every micro-batch also takes the KL
    from the reference on a batch of `anchor` examples (finetune/dpo_anchor.py)."""
    import time

    from tqdm import tqdm

    train_pairs = with_reference(model, train_pairs, device=device, batch_size=recipe.batch_size)
    eval_pairs = with_reference(model, eval_pairs, device=device, batch_size=recipe.batch_size)
    anchors = None
    if recipe.anchor_weight and anchor:
        anchors = cycle(
            reference_batches(model, anchor, batch_size=recipe.batch_size, device=device)
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    per_step = recipe.batch_size * recipe.grad_accum
    total_steps = recipe.max_steps or max(1, round(recipe.epochs * len(train_pairs) / per_step))
    scheduler = get_scheduler(
        recipe.schedule,
        optimizer,
        num_warmup_steps=min(recipe.warmup_steps, total_steps - 1),
        num_training_steps=total_steps,
    )
    eval_before = evaluate_pairs(model, eval_pairs, recipe, device)
    curve: list[dict[str, float]] = []
    if eval_before:
        curve.append({"step": 0.0, **{f"eval_{k}": v for k, v in eval_before.items()}})
    batches = _micro_batches(train_pairs, recipe)
    prefixes = PrefixCache(model, device=device, refresh_every=1)  # exact log-probabilities
    model.train()
    seen, tick = 0, time.perf_counter()
    bar = tqdm(total=total_steps, disable=not progress, desc="dpo (shared prefix)")
    for step in range(1, total_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {"loss": 0.0}
        for _ in range(recipe.grad_accum):
            batch = next(batches)
            logps, counts = sequence_logps(
                model, _rows(batch), device=device, prefixes=prefixes, step=step
            )
            loss, figures = pair_loss(batch, logps, counts, recipe)
            if anchors is not None:
                kl = anchor_kl(model, next(anchors), device=device)
                loss = loss + recipe.anchor_weight * kl
                figures["anchor_kl"] = kl.item()
            (loss / recipe.grad_accum).backward()
            sums["loss"] += loss.item() / recipe.grad_accum
            for key, value in figures.items():
                sums[key] = sums.get(key, 0.0) + value / recipe.grad_accum
            seen += len(batch)
        torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
        optimizer.step()
        scheduler.step()
        point = {"step": float(step), **sums}
        if eval_pairs and (step % recipe.eval_every == 0 or step == total_steps):
            point.update(
                {
                    f"eval_{k}": v
                    for k, v in evaluate_pairs(model, eval_pairs, recipe, device).items()
                }
            )
        curve.append(point)
        bar.set_postfix(loss=f"{sums['loss']:.3f}")
        bar.update(1)
    bar.close()
    loop_seconds = time.perf_counter() - tick
    last = curve[-1] if curve else {}
    eval_after = {k.removeprefix("eval_"): v for k, v in last.items() if k.startswith("eval_")}
    return LoopResult(
        steps=total_steps,
        eval_before=eval_before,
        eval_after=eval_after,
        pairs_per_second=seen / max(loop_seconds, 1e-9),
        loop_seconds=loop_seconds,
        curve=curve,
    )

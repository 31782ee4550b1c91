"""Preference training (DPO) of a character's adapter: trl's `DPOTrainer`, or with the
recipe's `share_prefix` the project's own loop (`finetune/dpo_shared.py`, same loss, the card
prefix run once: far faster on a CPU).

It continues from the adapter the character has (its SFT adapter), which is also the reference:
trl copies it into a frozen `ref` adapter next to the trainable one; the shared-prefix loop
computes its log-probabilities before the first step. So DPO moves away from the SFT adapter,
not from the bare base model. Prompts are the pairs' own text (built by `bot.prompt.build_prompt`
with the model's chat template, as at serving); each reply is followed by what the template
writes after a reply.
The new adapter replaces the old like SFT's does (the old one becomes `adapter.previous/`), with
its training card, loss and reward curves.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bot.characters import Character, adapter_version
from bot.config import Config
from bot.engine.loading import load_base_model
from bot.training_data import TrainingRecord
from finetune.dpo_shared import LoopResult, encode_pairs, train_shared_prefix
from finetune.errors import FinetuneError
from finetune.examples import completion_text
from finetune.persona_chat import encode_records
from finetune.preference_data import PreferencePair
from finetune.recipe import DpoRecipe
from finetune.train import publish_adapter

log = logging.getLogger(__name__)

REFERENCE = "ref"  # the adapter name trl uses as the reference model


class DpoError(FinetuneError):
    pass


@dataclass
class DpoResult:
    adapter_path: Path
    started_from: str  # version (weights hash) of the adapter it continued from
    steps: int
    train_pairs: int
    eval_pairs: int
    skipped_pairs: int  # longer than max_seq_len
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    pairs_per_second: float  # (chosen, rejected) pairs through the training loop
    seconds: float
    loop_seconds: float = 0.0
    curve: list[dict[str, float]] = field(default_factory=list)


def split_pairs(
    pairs: Sequence[PreferencePair], eval_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Held-out pairs by prompt, so no evaluated prompt is trained on; about `eval_fraction`."""
    by_prompt: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in pairs:
        by_prompt[pair.prompt].append(pair)
    prompts = sorted(by_prompt)
    random.Random(seed).shuffle(prompts)
    train, held_out = [], []
    for prompt in prompts:
        target = held_out if len(held_out) < eval_fraction * len(pairs) else train
        target.extend(by_prompt[prompt])
    if not train:  # too few prompts to hold any out
        return held_out, []
    return train, held_out


def dpo_rows(
    pairs: Sequence[PreferencePair], tokenizer: Any, max_seq_len: int
) -> tuple[list[dict[str, str]], int]:
    """trl's standard preference rows, and how many pairs were too long to keep whole."""
    rows, skipped = [], 0
    for pair in pairs:
        chosen = completion_text(tokenizer, pair.chosen)
        rejected = completion_text(tokenizer, pair.rejected)
        longest = max(len(tokenizer.encode(pair.prompt + c)) for c in (chosen, rejected))
        if longest > max_seq_len:
            skipped += 1
            continue
        rows.append({"prompt": pair.prompt, "chosen": chosen, "rejected": rejected})
    return rows, skipped


def loss_settings(recipe: DpoRecipe) -> dict[str, Any]:
    """trl's loss: DPO's sigmoid loss, plus the chosen replies' NLL when `sft_weight` is set."""
    if not recipe.sft_weight:
        return {"loss_type": ["sigmoid"], "loss_weights": None}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, recipe.sft_weight]}


def _eval_metrics(metrics: dict[str, float]) -> dict[str, float]:
    keep = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")
    return {k.removeprefix("eval_"): float(metrics[k]) for k in keep if k in metrics}


def train_dpo(
    character: Character,
    *,
    start_adapter: Path,
    pairs: Sequence[PreferencePair],
    out_dir: Path,
    recipe: DpoRecipe,
    config: Config,
    work_dir: Path,
    anchor_records: Sequence[TrainingRecord] = (),
    progress: bool = True,
) -> DpoResult:
    """Train `start_adapter` further on `pairs` and write the result to `out_dir`: with trl's
    DPOTrainer, or with `share_prefix` the project's own loop (finetune/dpo_shared.py), which
    with `recipe.anchor_weight` holds `anchor_records` where the reference had them."""
    from peft import PeftModel, prepare_model_for_kbit_training

    if recipe.anchor_weight and not anchor_records:
        raise DpoError(
            "anchor_weight is set but there is no conversation to anchor on; give "
            "Synthetic-Persona-Chat with --spc, or set anchor_weight: 0"
        )
    if not (start_adapter / "adapter_config.json").is_file():
        raise DpoError(
            f"{start_adapter}: no adapter to continue from; DPO starts from the character's SFT "
            f"adapter: train one first with `python -m finetune train {character.id}`"
        )
    train_pairs, eval_pairs = split_pairs(pairs, recipe.eval_fraction, recipe.seed)
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model, tokenizer, device, quantization = load_base_model(config)
    if recipe.share_prefix:
        train_set, skipped = encode_pairs(
            train_pairs, tokenizer, recipe.max_seq_len, recipe.sft_sources
        )
        eval_set, skipped_eval = encode_pairs(
            eval_pairs, tokenizer, recipe.max_seq_len, recipe.sft_sources
        )
    else:
        train_set, skipped = dpo_rows(train_pairs, tokenizer, recipe.max_seq_len)
        eval_set, skipped_eval = dpo_rows(eval_pairs, tokenizer, recipe.max_seq_len)
    if not train_set:
        raise DpoError(
            f"no preference pair to train {character.id} on ({len(pairs)} given, "
            f"{skipped + skipped_eval} longer than max_seq_len {recipe.max_seq_len}); make some "
            f"with `python -m finetune preferences synth {character.id}` or `... export`"
        )
    if quantization == "nf4":
        model = prepare_model_for_kbit_training(model)
    model = PeftModel.from_pretrained(model, str(start_adapter), is_trainable=True)
    if recipe.share_prefix:
        anchor = encode_records(anchor_records, tokenizer) if recipe.anchor_weight else []
        loop = train_shared_prefix(
            model, train_set, eval_set, recipe, device=device, anchor=anchor, progress=progress
        )
    else:
        run_dir = work_dir / f"{character.id}-dpo"
        loop = _train_with_trl(
            model, tokenizer, train_set, eval_set, recipe, device, run_dir, progress=progress
        )
    result = DpoResult(
        adapter_path=out_dir,
        started_from=adapter_version(start_adapter),
        steps=loop.steps,
        train_pairs=len(train_set),
        eval_pairs=len(eval_set),
        skipped_pairs=skipped + skipped_eval,
        eval_before=loop.eval_before,
        eval_after=loop.eval_after,
        pairs_per_second=loop.pairs_per_second,
        seconds=time.perf_counter() - started,
        loop_seconds=loop.loop_seconds,
        curve=loop.curve,
    )
    publish_adapter(
        model,
        out_dir,
        config,
        lambda folder: write_dpo_card(
            folder, character, recipe, config, result, start_adapter, pairs
        ),
    )
    return result


def _train_with_trl(
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, str]],
    eval_rows: list[dict[str, str]],
    recipe: DpoRecipe,
    device: str,
    run_dir: Path,
    *,
    progress: bool,
) -> LoopResult:
    """trl's DPOTrainer on the model's trainable adapter; trl copies it into a frozen `ref`
    adapter, the reference, which is deleted again afterwards."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.schedule,
        warmup_steps=recipe.warmup_steps,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.max_grad_norm,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        beta=recipe.beta,
        **loss_settings(recipe),
        max_length=recipe.max_seq_len,
        # Once for every pair when the run sees each pair at least once; per step (only the
        # pairs trained on) when max_steps stops it before the end of the first epoch.
        precompute_ref_log_probs=recipe.max_steps is None
        or recipe.max_steps * recipe.batch_size * recipe.grad_accum >= len(train_rows),
        logging_steps=1,
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=recipe.eval_every,
        save_strategy="no",
        report_to="none",
        seed=recipe.seed,
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        # Recomputing activations saves GPU memory on big models; on a CPU it only costs time.
        gradient_checkpointing=device == "cuda",
        disable_tqdm=not progress,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
    )
    eval_before = _eval_metrics(trainer.evaluate()) if eval_rows else {}
    tick = time.perf_counter()
    output = trainer.train()
    loop_seconds = time.perf_counter() - tick
    eval_after = _eval_metrics(trainer.evaluate()) if eval_rows else {}
    # The evaluation before training is logged before the trainer's state starts: step 0.
    before = {"step": 0.0, **{f"eval_{k}": v for k, v in eval_before.items()}}
    curve = ([before] if eval_before else []) + [
        {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
        for entry in trainer.state.log_history
    ]
    model.delete_adapter(REFERENCE)
    shutil.rmtree(run_dir, ignore_errors=True)
    return LoopResult(
        steps=output.global_step,
        eval_before=eval_before,
        eval_after=eval_after,
        pairs_per_second=float(output.metrics.get("train_samples_per_second", 0.0)),
        loop_seconds=loop_seconds,
        curve=curve,
    )


def write_dpo_card(
    folder: Path,
    character: Character,
    recipe: DpoRecipe,
    config: Config,
    result: DpoResult,
    start_adapter: Path,
    pairs: Sequence[PreferencePair],
) -> None:
    """TRAINING.md, training.json and dpo_curve.png next to the adapter weights; the SFT
    adapter's own card is kept as `sft/` (what the reference was trained on)."""
    sources: dict[str, int] = defaultdict(int)
    for pair in pairs:
        sources[pair.source] += 1
    facts = {
        "character": character.id,
        "method": "dpo",
        "base_model": config.model.base,
        "recipe": recipe.model_dump(),
        "pairs_by_source": dict(sources),
        **{k: v for k, v in asdict(result).items() if k not in ("adapter_path", "curve")},
    }
    (folder / "training.json").write_text(
        json.dumps({**facts, "curve": result.curve}, indent=2) + "\n", encoding="utf-8"
    )
    sft = folder / "sft"
    sft.mkdir()
    for name in ("TRAINING.md", "training.json", "loss_curve.png"):
        if (start_adapter / name).is_file():
            shutil.copy2(start_adapter / name, sft / name)
    plot_dpo_curve(result.curve, folder / "dpo_curve.png", title=f"{character.name}: DPO")
    settings = ", ".join(f"{k}={v}" for k, v in recipe.model_dump().items())
    before, after = result.eval_before, result.eval_after
    by_source = ", ".join(f"{n} {s}" for s, n in sorted(sources.items()))
    lines = [
        f"# Adapter for {character.name} (SFT, then DPO)",
        "",
        f"- base model: `{config.model.base}`",
        f"- continued from adapter `{result.started_from}` (its card: [sft/TRAINING.md]"
        "(sft/TRAINING.md)), which is also the DPO reference",
        f"- pairs: {by_source}; {result.train_pairs} trained, {result.eval_pairs} held out "
        f"(by prompt), {result.skipped_pairs} too long",
        f"- recipe: {settings}",
        f"- steps: {result.steps}",
    ]
    if before and after:
        lines.append(
            f"- held-out pairs: DPO loss {before.get('loss', float('nan')):.4f} -> "
            f"{after.get('loss', float('nan')):.4f}, reward accuracy "
            f"{before.get('rewards/accuracies', float('nan')):.2f} -> "
            f"{after.get('rewards/accuracies', float('nan')):.2f}"
        )
    lines += [
        f"- speed: {result.pairs_per_second:.2f} pairs/s, {result.seconds:.0f} s in all",
        "",
        "![DPO curves](dpo_curve.png)",
    ]
    (folder / "TRAINING.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot_dpo_curve(curve: list[dict[str, float]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, reward_ax) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for key, label, ax, style in (
        ("loss", "train loss", loss_ax, "-"),
        ("eval_loss", "held-out loss", loss_ax, "o-"),
        ("rewards/margins", "train margin", reward_ax, "-"),
        ("eval_rewards/margins", "held-out margin", reward_ax, "o-"),
        ("eval_rewards/accuracies", "held-out accuracy", reward_ax, "s--"),
    ):
        points = [(p["step"], p[key]) for p in curve if key in p and "step" in p]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label, linewidth=1)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("DPO loss")
    reward_ax.set_xlabel("step")
    reward_ax.set_ylabel("reward margin / accuracy")
    for ax in (loss_ax, reward_ax):
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

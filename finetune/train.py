"""LoRA training of one character's adapter: a plain PyTorch loop over encoded examples.

NF4 QLoRA (`prepare_model_for_kbit_training`) when the base is quantized (CUDA); plain LoRA on
the CPU. Checkpoints every `checkpoint_every` steps let an interrupted run resume where it
stopped (same data and recipe). The adapter reaches `characters/<id>/adapter/` only when training
finishes; the one it replaces is kept as `adapter.previous/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm import tqdm
from transformers import get_scheduler

from bot.characters import Character
from bot.config import Config
from bot.context import PromptAssembler
from bot.engine.loading import load_base_model
from bot.training_data import DatasetFiles, read_records
from finetune.errors import FinetuneError
from finetune.examples import encode_all
from finetune.losses import PrefixCache, batch_loss, evaluate, make_batches
from finetune.recipe import Recipe

log = logging.getLogger(__name__)


class TrainError(FinetuneError):
    pass


@dataclass
class TrainResult:
    adapter_path: Path
    steps: int
    train_examples: int
    eval_examples: int
    knowledge_examples: int  # of train_examples: knowledge pairs from the lore entries
    eval_loss_before: float
    eval_loss_after: float
    final_train_loss: float
    tokens_per_second: float  # prompt and target tokens through the training loop
    seconds: float  # everything: loading, encoding, evaluation, saving
    loop_seconds: float = 0.0  # the optimizer steps alone
    resumed_from_step: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)


# -- files -------------------------------------------------------------------------------------


def data_hash(*paths: Path, recipe: Recipe, base: str) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path.exists():  # eval.jsonl is optional
            digest.update(path.read_bytes())
    digest.update(recipe.model_dump_json().encode())
    digest.update(base.encode())
    return digest.hexdigest()[:16]


def replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; the folder it replaces becomes `<target>.previous`."""
    previous = target.with_name(target.name + ".previous")
    if target.exists():
        shutil.rmtree(previous, ignore_errors=True)
        target.rename(previous)
    new.rename(target)


def save_checkpoint(folder: Path, model: Any, state: dict[str, Any]) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"adapter": get_peft_model_state_dict(model), **state}, tmp / "state.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(folder: Path, fingerprint: str) -> dict[str, Any] | None:
    path = folder / "state.pt"
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if state.get("fingerprint") != fingerprint:
        log.info("Checkpoint in %s is for other data or settings; starting over", folder)
        return None
    return state


# -- training ----------------------------------------------------------------------------------


def train(
    character: Character,
    *,
    data_dir: Path,
    out_dir: Path,
    recipe: Recipe,
    config: Config,
    work_dir: Path,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train `character`'s adapter on `data_dir/{train,eval}.jsonl` (plus the knowledge pairs
    of `knowledge.jsonl` when there are any) and write it to `out_dir`."""
    files = DatasetFiles(data_dir)
    train_path, eval_path, knowledge_path = files.train, files.eval, files.knowledge
    if not train_path.exists():
        raise TrainError(
            f"{train_path} does not exist; make it with "
            f"`python -m finetune build --character {character.id} SOURCE...`"
        )
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    model, tokenizer, device, quantization = load_base_model(config)
    encode = dict(
        character=character,
        tokenizer=tokenizer,
        max_seq_len=recipe.max_seq_len,
        assembler=PromptAssembler.from_config(tokenizer, config, [character]),
    )
    records = read_records(train_path)
    knowledge = read_records(knowledge_path) if knowledge_path.exists() else []
    train_set, skipped = encode_all([*records, *knowledge], **encode)
    eval_set = []
    if eval_path.exists():
        eval_set, _ = encode_all(read_records(eval_path), **encode)
    if not train_set:
        raise TrainError(f"{train_path}: no usable example (each needs a user turn to answer)")
    if skipped:
        log.info("Skipped %d examples without a user turn before the reply", skipped)

    if quantization == "nf4":
        model = prepare_model_for_kbit_training(model)
    lora = LoraConfig(
        r=recipe.r,
        lora_alpha=recipe.alpha,
        lora_dropout=recipe.dropout,
        target_modules=list(recipe.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(
        len(make_batches(train_set, recipe.batch_size, recipe.seed, by_prefix=recipe.share_prefix))
        / recipe.grad_accum
    )
    total_steps = recipe.max_steps or max(1, round(recipe.epochs * steps_per_epoch))
    scheduler = get_scheduler(
        recipe.schedule,
        optimizer,
        num_warmup_steps=min(recipe.warmup_steps, total_steps - 1),
        num_training_steps=total_steps,
    )

    fingerprint = data_hash(
        train_path, eval_path, knowledge_path, recipe=recipe, base=config.model.base
    )
    checkpoint = work_dir / f"{character.id}-checkpoint"
    state = load_checkpoint(checkpoint, fingerprint) if resume else None
    step, curve = 0, []
    best = {"loss": math.inf, "step": 0, "weights": None, "bad_evals": 0}
    if state:
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, curve, best = state["step"], state["curve"], state["best"]
        eval_before = state["eval_before"]
        log.info("Resuming %s from step %d of %d", character.id, step, total_steps)
    else:
        eval_before = evaluate(model, eval_set, recipe, device)
        curve.append({"step": 0, "eval_loss": eval_before})
    resumed_from = step

    # The order of micro-batches is a function of (seed, epoch): a resumed run sees the same.
    def micro_batches(from_step: int):
        epoch = 0
        seen = 0
        while True:
            batches = make_batches(
                train_set, recipe.batch_size, recipe.seed + epoch, by_prefix=recipe.share_prefix
            )
            for batch in batches:
                if seen >= from_step * recipe.grad_accum:
                    yield batch
                seen += 1
            epoch += 1

    batches = micro_batches(step)
    prefixes = PrefixCache(model, device=device, refresh_every=recipe.prefix_refresh_every)

    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc=f"train {character.id}")
    tokens, tick, train_loss = 0, time.perf_counter(), math.nan
    while step < total_steps:
        optimizer.zero_grad(set_to_none=True)
        loss_sum, count = 0.0, 0
        for _ in range(recipe.grad_accum):
            batch = next(batches)
            loss, n = batch_loss(
                model,
                batch,
                share_prefix=recipe.share_prefix,
                device=device,
                prefix_state=prefixes.get(batch, step) if recipe.share_prefix else None,
            )
            (loss / max(n, 1) / recipe.grad_accum).backward()
            loss_sum, count = loss_sum + loss.item(), count + n
            tokens += sum(len(e) for e in batch)
        torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        train_loss = loss_sum / max(count, 1)
        point: dict[str, float] = {"step": step, "train_loss": train_loss}
        if eval_set and (step % recipe.eval_every == 0 or step == total_steps):
            point["eval_loss"] = evaluate(model, eval_set, recipe, device)
            if point["eval_loss"] < best["loss"]:
                best = {
                    "loss": point["eval_loss"],
                    "step": step,
                    "weights": {k: v.clone() for k, v in get_peft_model_state_dict(model).items()},
                    "bad_evals": 0,
                }
            else:
                best["bad_evals"] += 1
        curve.append(point)
        rate = tokens / (time.perf_counter() - tick)
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{rate:.0f}")
        bar.update(1)
        patience = recipe.early_stopping_patience
        if patience and best["bad_evals"] >= patience:
            log.info(
                "Early stop at step %d: eval loss has not improved for %d evals", step, patience
            )
            break
        if step % recipe.checkpoint_every == 0 and step < total_steps:
            save_checkpoint(
                checkpoint,
                model,
                {
                    "fingerprint": fingerprint,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "curve": curve,
                    "best": best,
                    "eval_before": eval_before,
                },
            )
    bar.close()
    loop_seconds = time.perf_counter() - tick
    tokens_per_second = tokens / max(loop_seconds, 1e-9)

    if best["weights"] is not None:  # keep the adapter with the lowest eval loss
        set_peft_model_state_dict(model, best["weights"])
    eval_after = evaluate(model, eval_set, recipe, device)
    result = TrainResult(
        adapter_path=out_dir,
        steps=step,
        train_examples=len(train_set),
        eval_examples=len(eval_set),
        knowledge_examples=len(knowledge),
        eval_loss_before=eval_before,
        eval_loss_after=eval_after,
        final_train_loss=train_loss,
        tokens_per_second=tokens_per_second,
        seconds=time.perf_counter() - started,
        loop_seconds=loop_seconds,
        resumed_from_step=resumed_from,
        curve=curve,
    )
    publish_adapter(
        model,
        out_dir,
        config,
        lambda folder: write_training_card(
            folder, character, recipe, config, result, fingerprint, best["step"]
        ),
    )
    shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def publish_adapter(
    model: Any, out_dir: Path, config: Config, write_card: Callable[[Path], None]
) -> None:
    """Save the adapter and its card next to `out_dir`, then swap it in whole (the adapter it
    replaces becomes `<out_dir>.previous`): a reader never sees half an adapter."""
    staging = out_dir.with_name(out_dir.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    # Name the base as configured ("embedded"), not this machine's cache path.
    for adapter_config in model.peft_config.values():
        adapter_config.base_model_name_or_path = config.model.base
    # The vocabulary is never resized here: no lookup of the base model's config on the Hub.
    model.save_pretrained(str(staging), save_embedding_layers=False)
    (staging / "README.md").unlink(missing_ok=True)  # peft's template; TRAINING.md is the card
    write_card(staging)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(staging, out_dir)


def write_training_card(
    folder: Path,
    character: Character,
    recipe: Recipe,
    config: Config,
    result: TrainResult,
    fingerprint: str,
    best_step: int,
) -> None:
    """TRAINING.md, training.json and loss_curve.png next to the adapter weights."""
    facts = {
        "character": character.id,
        "base_model": config.model.base,
        "data_hash": fingerprint,
        "recipe": recipe.model_dump(),
        "best_eval_step": best_step,
        **{k: v for k, v in asdict(result).items() if k not in ("adapter_path", "curve")},
    }
    (folder / "training.json").write_text(
        json.dumps({**facts, "curve": result.curve}, indent=2) + "\n", encoding="utf-8"
    )
    plot_curve(result.curve, folder / "loss_curve.png", title=f"{character.name}: LoRA training")
    settings = ", ".join(f"{k}={v}" for k, v in recipe.model_dump().items())
    (folder / "TRAINING.md").write_text(
        f"# Adapter for {character.name}\n\n"
        f"- base model: `{config.model.base}`\n"
        f"- data hash: `{fingerprint}` ({result.train_examples} train / "
        f"{result.eval_examples} eval examples; {result.knowledge_examples} of the train "
        "examples are knowledge pairs)\n"
        f"- recipe: {settings}\n"
        f"- steps: {result.steps} (best eval loss at step {best_step})\n"
        f"- eval loss: {result.eval_loss_before:.4f} before, {result.eval_loss_after:.4f} after\n"
        f"- final train loss: {result.final_train_loss:.4f}\n"
        f"- speed: {result.tokens_per_second:.0f} tokens/s, {result.seconds:.0f} s in all\n\n"
        "![loss curve](loss_curve.png)\n",
        encoding="utf-8",
    )


def plot_curve(curve: list[dict[str, float]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    train_points = [(p["step"], p["train_loss"]) for p in curve if "train_loss" in p]
    eval_points = [(p["step"], p["eval_loss"]) for p in curve if "eval_loss" in p]
    if train_points:
        ax.plot(*zip(*train_points, strict=True), label="train", linewidth=1)
    if eval_points:
        ax.plot(*zip(*eval_points, strict=True), "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

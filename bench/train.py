"""Training speed of the fine-tuning pipeline on this machine, and what it means for a character.

SFT (default): runs `finetune.train.train` (the code behind `python -m finetune train`) for a
few steps on a character's built training set, once as configured (the card prefix shared per
batch) and once with full sequences as the baseline, in the same process. Prints tokens/s,
examples/s, the ratio, and the projected time for a 300-example character trained for 3 epochs.

--method dpo: SFT as configured (the baseline), then `finetune.dpo.train_dpo` (behind
`train --method dpo`) for a few steps on the character's preference pairs with trl's
DPOTrainer (full sequences) and with the project's shared-prefix loop (dpo-cpu.yaml), in the
same process. Prints DPO pairs/s next to SFT examples/s, the ratios, the time outside the
training loop (loading, the shared loop's one-off reference pass, saving), and the projected
time for 200 pairs x 2 epochs.

    .venv/bin/python -m bench.train [--character goku] [--steps 6] [--baseline-steps 3]
    .venv/bin/python -m bench.train --method dpo [--character goku] [--steps 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from bot.characters import CharacterRegistry
from bot.config import load_config
from bot.training_data import DatasetFiles
from finetune.dpo import DpoResult, train_dpo
from finetune.preference_data import PAIR_FILES, read_pairs
from finetune.recipe import DpoRecipe, load_recipe
from finetune.train import TrainResult, train

RECIPES = Path(__file__).parent.parent / "finetune" / "recipes"


def timed_run(
    character, train_file: Path, steps: int, share_prefix: bool, config, batch_size: int
) -> TrainResult:
    with tempfile.TemporaryDirectory() as tmp:
        data = DatasetFiles(Path(tmp) / "data")
        data.folder.mkdir()
        data.train.write_bytes(train_file.read_bytes())  # no eval: time steps only
        recipe = load_recipe(
            RECIPES / "cpu-small.yaml",
            max_steps=steps,
            share_prefix=share_prefix,
            batch_size=batch_size,
        )
        return train(
            character,
            data_dir=data.folder,
            out_dir=Path(tmp) / "adapter",
            recipe=recipe,
            config=config,
            work_dir=Path(tmp) / "work",
            resume=False,
            progress=False,
        )


def timed_dpo(
    character, pairs_files: list[Path], steps: int, config, **settings: object
) -> DpoResult:
    pairs = [pair for path in pairs_files for pair in read_pairs(path, character.id)]
    recipe = load_recipe(
        RECIPES / "dpo-cpu.yaml", DpoRecipe, max_steps=steps, eval_fraction=0, **settings
    )
    with tempfile.TemporaryDirectory() as tmp:
        return train_dpo(
            character,
            start_adapter=character.adapter_path,
            pairs=pairs,
            out_dir=Path(tmp) / "adapter",
            recipe=recipe,
            config=config,
            work_dir=Path(tmp) / "work",
            progress=False,
        )


def bench_dpo(character, config, steps: int) -> None:
    folder = DatasetFiles.of(config.characters_path, character.id).preferences
    pairs_files = [folder / name for name in PAIR_FILES if (folder / name).is_file()]
    if not pairs_files or character.adapter_path is None:
        raise SystemExit(
            f"{character.id} needs an adapter and pairs in {folder}: run `python -m finetune "
            f"preferences synth {character.id}` first"
        )
    train_file = DatasetFiles.of(config.characters_path, character.id).train
    batch = load_recipe(None).batch_size
    sft = timed_run(character, train_file, steps, True, config, batch)
    sft_rate = steps * batch / sft.loop_seconds
    print(
        f"SFT (shared card prefix): {steps} steps of {batch} examples, {sft_rate:.2f} examples/s",
        flush=True,
    )
    runs = (
        # trl's DPOTrainer: one pair per micro-batch (4 needed 18 GiB), the reference per step.
        ("trl DPOTrainer, full sequences", {"share_prefix": False, "batch_size": 1}),
        ("shared-prefix loop (dpo-cpu.yaml)", {}),
    )
    rates = []
    for label, settings in runs:
        dpo = timed_dpo(character, pairs_files, steps, config, **settings)
        recipe = load_recipe(RECIPES / "dpo-cpu.yaml", DpoRecipe, **settings)
        per_step = recipe.batch_size * recipe.grad_accum
        rates.append(dpo.pairs_per_second)
        print(
            f"DPO, {label}: {dpo.steps} steps of {per_step} pairs, "
            f"{dpo.pairs_per_second:.3f} pairs/s ({dpo.pairs_per_second / sft_rate:.2f}x SFT "
            f"examples/s); {dpo.seconds - dpo.loop_seconds:.0f} s outside the loop for "
            f"{dpo.train_pairs} pairs; 200 pairs x 2 epochs in "
            f"{400 / dpo.pairs_per_second / 60:.0f} min",
            flush=True,
        )
    print(f"ratio shared-prefix / trl DPO pairs/s: {rates[1] / rates[0]:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["sft", "dpo"], default="sft")
    parser.add_argument("--character", default="goku")
    parser.add_argument("--steps", type=int, default=6, help="steps of the configured run")
    parser.add_argument("--baseline-steps", type=int, default=4, help="steps of the baseline")
    parser.add_argument("--baseline-batch", type=int, default=2, help="batch of the baseline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config()
    character = CharacterRegistry.load(config.characters_path).get(args.character)
    train_file = DatasetFiles.of(config.characters_path, character.id).train
    if not train_file.exists():
        raise SystemExit(f"{train_file} is missing: run `python -m finetune build` first")
    if args.method == "dpo":
        bench_dpo(character, config, args.steps)
        return
    batch = load_recipe(None).batch_size
    # Full sequences keep every card token's activations for the backward pass: a batch of 8
    # needs more than 24 GiB, so the baseline runs smaller batches (compared per example).
    runs = (
        ("shared card prefix (default)", True, args.steps, batch),
        ("full sequences (baseline)", False, args.baseline_steps, args.baseline_batch),
    )
    rates = []
    for name, share, steps, size in runs:
        result = timed_run(character, train_file, steps, share, config, size)
        per_second = steps * size / result.loop_seconds
        rates.append(per_second)
        print(
            f"{name}: {steps} steps of {size} examples, {result.tokens_per_second:.0f} tokens/s, "
            f"{per_second:.2f} examples/s -> 300 examples x 3 epochs in "
            f"{900 / per_second / 60:.1f} min",
            flush=True,
        )
    print(f"ratio shared / full, examples per second: {rates[0] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

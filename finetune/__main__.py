"""`python -m finetune build | train | preferences | chat | compare | samples | eval`: from
scripts to a character's adapter, and the report that shows what the adapters do.

python -m finetune build --character goku characters/goku/data/sources/
python -m finetune train goku --recipe finetune/recipes/cpu-small.yaml
python -m finetune preferences synth goku
python -m finetune train goku --method dpo --recipe finetune/recipes/dpo-cpu.yaml
python -m finetune chat goku
python -m finetune train-persona-chat --recipe finetune/recipes/persona-chat.yaml
python -m finetune eval
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from bot.characters import Character, adapter_dir
from bot.config import PROJECT_ROOT, Config, ConfigError, load_config
from bot.logging_setup import setup_logging
from bot.training_data import DatasetFiles, RecordError
from finetune import lore_cli
from finetune.errors import FinetuneError
from finetune.preference_data import SOURCES
from finetune.recipe import DpoRecipe, Recipe, load_recipe

log = logging.getLogger("finetune")
DEFAULT_SPC = PROJECT_ROOT.parent / "shared" / "data" / "synthetic-persona-chat" / "valid.csv"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("character", help="character id (a folder in characters/)")
    parser.add_argument(
        "--data",
        type=Path,
        help="folder with train.jsonl and eval.jsonl (default: characters/<id>/data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where the adapter goes (default: characters/<id>/adapter; the old one is kept "
        "as adapter.previous)",
    )
    parser.add_argument(
        "--method",
        choices=["sft", "dpo"],
        default="sft",
        help="sft: LoRA on the character's lines; dpo: preference training of the adapter it "
        "has, on preference pairs (trl's DPOTrainer; recipe: finetune/recipes/dpo-cpu.yaml) "
        "[%(default)s]",
    )
    parser.add_argument(
        "--preferences",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="pairs for --method dpo (default: the character's data/preferences/synthetic.jsonl "
        "and pairs.jsonl, those that exist)",
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=SOURCES,
        metavar="SOURCE",
        help=f"train --method dpo on these kinds of pairs only ({', '.join(SOURCES)}) [all]",
    )
    parser.add_argument(
        "--spc",
        type=Path,
        default=DEFAULT_SPC,
        help="Synthetic-Persona-Chat CSV whose training rows are the conversation DPO's "
        "anchor_weight holds in place [%(default)s]",
    )
    add_recipe_arguments(parser)


def add_preferences_arguments(parser: argparse.ArgumentParser) -> None:
    from finetune.synthesize import SynthOptions

    actions = parser.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export",
        help="users' swipes and votes (from Redis) as pairs.jsonl, votes.jsonl and a card",
    )
    export.add_argument("character", help="character id, name or alias")
    export.add_argument(
        "--since",
        help="only records from this date (YYYY-MM-DD, UTC) or this long ago (e.g. 7d, 12h)",
    )
    export.add_argument(
        "--out", type=Path, help="folder (default: characters/<id>/data/preferences)"
    )
    synth = actions.add_parser(
        "synth",
        help="pairs from the card's rules and the character's own lines, without users",
    )
    synth.add_argument("character", help="character id, name or alias")
    defaults = SynthOptions()
    synth.add_argument(
        "--contexts",
        type=int,
        default=defaults.contexts,
        help="each rule question with no history and after N-1 training windows [%(default)s]",
    )
    synth.add_argument(
        "--samples",
        type=int,
        default=defaults.samples,
        help="answers sampled per prompt by the base model and by the adapter [%(default)s]",
    )
    synth.add_argument(
        "--contrast",
        type=int,
        default=defaults.contrast,
        help="contrast pairs: the real line vs another adapter's answer (0: none) [%(default)s]",
    )
    synth.add_argument(
        "--topic-messages",
        type=int,
        default=defaults.topic_messages,
        help="per rule, training messages on its topic (its guard's `when`) asked too, with no "
        "history and in their own conversation (0: none) [%(default)s]",
    )
    synth.add_argument(
        "--chosen-uses",
        type=int,
        default=defaults.chosen_uses,
        help="most pairs one good answer is the chosen reply of, so no example answer is "
        "memorised word for word (0: no limit) [%(default)s]",
    )
    synth.add_argument(
        "--out",
        type=Path,
        help="pairs file (default: characters/<id>/data/preferences/synthetic.jsonl; its card "
        "is the same name with .md)",
    )


def add_persona_chat_arguments(parser: argparse.ArgumentParser) -> None:
    from finetune.persona_chat import DEFAULT_ADAPTER, HELD_OUT_EVERY

    parser.add_argument(
        "--spc",
        type=Path,
        default=DEFAULT_SPC,
        help=f"Synthetic-Persona-Chat CSV; every {HELD_OUT_EVERY}th row is held out for "
        "`eval` and never trained on [%(default)s]",
    )
    parser.add_argument(
        "--dialogues",
        type=int,
        default=48,
        help="training dialogues (rows not held out) to use; about 14 examples each [%(default)s]",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_ADAPTER,
        help="where the adapter goes [%(default)s]",
    )
    add_recipe_arguments(parser)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        type=Path,
        help="YAML file of settings (see finetune/recipes/); options below override it",
    )
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if an interrupted run left a checkpoint",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    settings = parser.add_argument_group(
        "recipe settings", "each overrides the recipe file; defaults in brackets"
    )
    helps = {
        "r": "LoRA rank",
        "alpha": "LoRA alpha (scale = alpha / r)",
        "dropout": "LoRA dropout",
        "target_modules": "module names to adapt, e.g. q_proj v_proj",
        "epochs": "passes over the training set (ignored when --max-steps is set)",
        "max_steps": "stop after this many optimizer steps",
        "learning_rate": "peak learning rate",
        "schedule": "learning-rate schedule after warm-up",
        "warmup_steps": "steps of linear warm-up",
        "weight_decay": "AdamW weight decay",
        "batch_size": "examples per micro-batch",
        "grad_accum": "micro-batches per optimizer step",
        "max_grad_norm": "gradient clipping",
        "max_seq_len": "tokens per example; the prompt is built within it, as at inference",
        "eval_every": "evaluate on eval.jsonl every N steps",
        "early_stopping_patience": "stop after N evaluations without a lower eval loss",
        "checkpoint_every": "save a resumable checkpoint every N steps",
        "seed": "random seed (data order, LoRA init, dropout)",
        "share_prefix": "compute the shared card prefix once per batch (true/false)",
        "prefix_refresh_every": "re-run the shared prefix every N steps (1 = exact)",
        "beta": "DPO only: how far the adapter may move from the one it starts from",
        "sft_weight": "DPO only: weight of an SFT term on the chosen replies (RPO; 0: none)",
        "sft_sources": "DPO only: pair sources whose chosen replies get the SFT term, e.g. "
        "contrast (default: all)",
        "eval_fraction": "DPO only: share of pairs held out (by prompt) for reward accuracy",
        "anchor_weight": "DPO only: weight of the KL from the starting adapter on ordinary "
        "dialogue (--spc training turns; 0: none)",
        "anchor_turns": "DPO only: how many --spc turns the anchor holds, one per dialogue",
    }
    dpo_only = {k: v for k, v in DpoRecipe.model_fields.items() if k not in Recipe.model_fields}
    fields = {**Recipe.model_fields, **dpo_only}
    for name, info in fields.items():
        flag = "--" + name.replace("_", "-")
        default = info.get_default(call_default_factory=True)
        if name in DpoRecipe.model_fields and name in Recipe.model_fields:
            dpo_default = DpoRecipe.model_fields[name].get_default(call_default_factory=True)
            if dpo_default != default:
                default = f"{default}; DPO {dpo_default}"
        kwargs: dict = {"help": f"{helps[name]} [{default}]"}
        if name in ("target_modules", "sft_sources"):
            kwargs["nargs"] = "+"
        elif name == "schedule":
            kwargs["choices"] = ["cosine", "linear", "constant"]
        elif name == "share_prefix":
            kwargs["type"] = lambda v: v.lower() in ("1", "true", "yes")
        elif info.annotation in (int, int | None):
            kwargs["type"] = int
        else:
            kwargs["type"] = float
        settings.add_argument(flag, dest=name, default=None, **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m finetune",
        description="Build a character's training set, train its LoRA adapter, try it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser(
        "build",
        help="turn scripts, subtitles, Q&A or chats into train/eval JSONL",
        description="Turn sources into a chat-format training set for one character.",
    )
    from finetune.build import add_build_arguments

    add_build_arguments(build)
    build.add_argument(
        "--show-masks",
        type=int,
        default=0,
        metavar="N",
        help="print N training examples as the trainer sees them: masked prompt, then the "
        "trained tokens inside [[...]]",
    )

    train = sub.add_parser(
        "train",
        help="train the character's LoRA adapter",
        description="LoRA training on the configured base model (NF4 QLoRA on CUDA, plain LoRA "
        "on the CPU), loss on the character's turns only, prompts built as at inference.",
    )
    add_train_arguments(train)

    preferences = sub.add_parser(
        "preferences",
        help="preference pairs for `train --method dpo`: export users' swipes and votes, or "
        "synthesize pairs from the card's rules",
    )
    add_preferences_arguments(preferences)

    persona = sub.add_parser(
        "train-persona-chat",
        help="train the adapter of the Synthetic-Persona-Chat protocol in `eval`",
        description="One LoRA adapter for User 2 of Synthetic-Persona-Chat dialogues, each "
        "prompted with its own persona as the card (so it learns to use a persona, not one "
        "character). Train with finetune/recipes/persona-chat.yaml.",
    )
    add_persona_chat_arguments(persona)

    chat = sub.add_parser(
        "chat",
        help="chat with a character in the terminal, with its (or another) adapter",
    )
    chat.add_argument("character", help="character id, name or alias")
    chat.add_argument(
        "--adapter",
        type=Path,
        help="adapter folder to try (default: the character's own adapter/ if any)",
    )
    chat.add_argument("--name", default="User", help="your name in the chat")

    compare = sub.add_parser(
        "compare",
        help="answers to the same messages with the card alone and with the adapter",
        description="Greedy answers to each MESSAGE in a fresh channel: card only (base model) "
        "vs card + adapter, side by side.",
    )
    compare.add_argument("character", help="character id, name or alias")
    compare.add_argument("messages", nargs="+", metavar="MESSAGE")
    compare.add_argument(
        "--adapter", type=Path, help="adapter folder (default: characters/<id>/adapter)"
    )

    samples = sub.add_parser(
        "samples",
        help="sampled answers before and after the serving levers (guards, candidates, guidance)",
        description="N sampled answers to each MESSAGE in a fresh channel: before (card + "
        "adapter, one sample, no guards) and after (config.yaml's generation settings with the "
        "rule guards), with each reply's seconds.",
    )
    samples.add_argument("character", help="character id, name or alias")
    samples.add_argument("messages", nargs="+", metavar="MESSAGE")
    samples.add_argument("-n", type=int, default=5, help="samples per message and set-up [5]")
    samples.add_argument(
        "--after-adapter",
        type=Path,
        metavar="DIR",
        help="compare adapters instead: the character's own (before) and DIR (after, e.g. "
        "characters/<id>/adapter-dpo), both without the serving levers",
    )

    evaluate = sub.add_parser(
        "eval",
        help="the persona-fidelity report: base vs card vs card + adapter",
        description="Answer held-out prompts and rule probes with five set-ups and measure "
        "attribution, probes, reference metrics and adapter likelihood; writes report.md, "
        "report.json and charts.",
    )
    evaluate.add_argument(
        "characters", nargs="*", help="character ids (default: every character with an adapter)"
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        help="report folder [docs/report]; with --only: where its JSON goes (none without --out)",
    )
    evaluate.add_argument("--quick", action="store_true", help="few prompts: a smoke run")
    evaluate.add_argument(
        "--only",
        choices=["likelihood", "lore"],
        help="run one section, print its table, write no report: likelihood = each "
        "character's held-out lines under every adapter, own-adapter hits@1; lore = the lore "
        "questions' pass rates (minutes, not the report's hour)",
    )
    evaluate.add_argument("--prompts", type=int, help="held-out prompts per character [24]")
    evaluate.add_argument(
        "--spc-dialogues",
        type=int,
        metavar="N",
        help="held-out Synthetic-Persona-Chat dialogues for the damage guard and the "
        "persona-injection protocol [20]",
    )
    evaluate.add_argument(
        "--persona-chat-adapter",
        type=Path,
        help="adapter of the persona-injection protocol (default: the one "
        "`train-persona-chat` writes)",
    )
    evaluate.add_argument(
        "--spc",
        type=Path,
        default=DEFAULT_SPC,
        help="Synthetic-Persona-Chat CSV for the damage guard and the persona-injection "
        "protocol (both skipped if missing)",
    )
    add_eval_adapters_parser(sub)
    lore_cli.add_parsers(sub)
    return parser.parse_args(argv)


def add_eval_adapters_parser(sub: argparse._SubParsersAction) -> None:
    from finetune.eval_adapters import DEFAULT_AFTER, DEFAULT_BEFORE

    compare = sub.add_parser(
        "eval-adapters",
        help="two adapter versions per character (e.g. SFT vs SFT + DPO): probes, attribution, "
        "held-out likelihood, SPC damage guard",
        description="Answer each character's rule probes (no guards) and held-out prompts, and "
        "score its held-out lines and Synthetic-Persona-Chat dialogues, under its --before and "
        "its --after adapter; writes adapters.md and adapters.json.",
    )
    compare.add_argument(
        "characters",
        nargs="*",
        help="character ids (default: every character with both adapter folders)",
    )
    compare.add_argument(
        "--before",
        default=DEFAULT_BEFORE,
        help="adapter folder inside characters/<id>/ measured first [%(default)s]",
    )
    compare.add_argument(
        "--after",
        default=DEFAULT_AFTER,
        help="adapter folder inside characters/<id>/ compared with it [%(default)s]",
    )
    compare.add_argument(
        "--out", type=Path, help="folder for adapters.md and adapters.json [docs/report/adapters]"
    )
    compare.add_argument("--quick", action="store_true", help="few prompts: a smoke run")
    compare.add_argument("--prompts", type=int, help="held-out prompts per character [24]")
    compare.add_argument(
        "--spc",
        type=Path,
        default=DEFAULT_SPC,
        help="Synthetic-Persona-Chat CSV for the damage guard (skipped if missing) [%(default)s]",
    )


def command_build(args: argparse.Namespace) -> int:
    from finetune.build import BuildOptions, run_build

    result = run_build(BuildOptions.from_args(args))
    print(result.summary())
    if args.show_masks:
        show_masks(args.character, result.files.train, args.show_masks)
    return 0


def show_masks(character_id: str, train_path: Path, count: int) -> None:
    from bot.characters import CharacterRegistry
    from bot.engine.loading import load_tokenizer
    from bot.training_data import read_records
    from finetune.examples import encode_all
    from finetune.examples import show_masks as render_masks

    config = load_config()
    character = CharacterRegistry.load(config.characters_path).get(character_id)
    tokenizer = load_tokenizer(config)
    records = read_records(train_path)[:count]
    examples, _ = encode_all(records, character, tokenizer, max_seq_len=Recipe().max_seq_len)
    for number, example in enumerate(examples, start=1):
        print(f"\n===== example {number} ({example.id}): masked, then [[trained]] =====")
        print(render_masks(example, tokenizer))


def command_train(args: argparse.Namespace) -> int:
    from bot.characters import CharacterRegistry

    config = load_config()
    character = CharacterRegistry.load(config.characters_path).get(args.character)
    data_dir = args.data or DatasetFiles.of(config.characters_path, character.id).folder
    out_dir = args.out or adapter_dir(config.characters_path, character.id)
    if args.method == "dpo":
        return run_dpo(args, character, config, out_dir=out_dir)
    if args.preferences or args.sources:
        raise FinetuneError(
            "--preferences and --sources are for --method dpo; SFT trains on --data"
        )
    return run_training(args, character, config, data_dir=data_dir, out_dir=out_dir)


def recipe_overrides(args: argparse.Namespace) -> dict[str, object]:
    names = {*Recipe.model_fields, *DpoRecipe.model_fields}
    return {name: getattr(args, name, None) for name in names}


def run_dpo(
    args: argparse.Namespace, character: Character, config: Config, *, out_dir: Path
) -> int:
    from finetune.dpo import train_dpo
    from finetune.persona_chat import anchor_records
    from finetune.preference_data import PAIR_FILES, read_pairs

    folder = DatasetFiles.of(config.characters_path, character.id).preferences
    paths = args.preferences or [folder / n for n in PAIR_FILES if (folder / n).is_file()]
    if not paths:
        raise FinetuneError(
            f"no preference pairs for {character.id} in {folder}; make them "
            f"with `python -m finetune preferences synth {character.id}` (from the card) or "
            f"`... preferences export {character.id}` (from users' swipes and votes), or give "
            "--preferences FILE"
        )
    pairs = [pair for path in paths for pair in read_pairs(path, character.id)]
    if args.sources:
        pairs = [pair for pair in pairs if pair.source in args.sources]
    recipe = load_recipe(args.recipe, DpoRecipe, **recipe_overrides(args))
    anchor = []
    if recipe.anchor_weight:
        if not args.spc.is_file():
            raise FinetuneError(
                f"{args.spc}: no Synthetic-Persona-Chat CSV there, and the recipe's "
                "anchor_weight needs its conversation (give one with --spc, or --anchor-weight 0)"
            )
        anchor = anchor_records(args.spc, recipe.anchor_turns)
    start = adapter_dir(config.characters_path, character.id)
    result = train_dpo(
        character,
        start_adapter=start,
        pairs=pairs,
        out_dir=out_dir,
        recipe=recipe,
        config=config,
        work_dir=config.data_path / "training",
        anchor_records=anchor,
        progress=not args.quiet,
    )
    before, after = result.eval_before, result.eval_after
    held_out = ""
    if before and after:
        held_out = (
            f"; held-out pairs: loss {before['loss']:.4f} -> {after['loss']:.4f}, reward "
            f"accuracy {before['rewards/accuracies']:.2f} -> {after['rewards/accuracies']:.2f}"
        )
    print(
        f"{character.name}: DPO {result.steps} steps over {result.train_pairs} training pairs in "
        f"{result.seconds:.0f} s ({result.pairs_per_second:.2f} pairs/s){held_out}; adapter in "
        f"{result.adapter_path}"
    )
    return 0


def command_preferences(args: argparse.Namespace) -> int:
    from bot.characters import CharacterRegistry
    from finetune.preferences import run_export, run_synth
    from finetune.synthesize import SynthOptions

    config = load_config()
    registry = CharacterRegistry.load(config.characters_path)
    character = registry.get(args.character)
    if args.action == "export":
        result = run_export(config, character, args.since, args.out)
        print(
            f"{character.name}: {len(result.pairs)} pairs and {result.votes} votes from "
            f"{result.records} records, in {result.folder}"
        )
        return 0
    options = SynthOptions(
        contexts=args.contexts,
        samples=args.samples,
        contrast=args.contrast,
        topic_messages=args.topic_messages,
        chosen_uses=args.chosen_uses,
    )
    synth, path = run_synth(config, registry, character, options, args.out)
    sources = ", ".join(
        f"{sum(p.source == s for p in synth.pairs)} {s}" for s in ("rule", "mend", "contrast")
    )
    print(f"{character.name}: {len(synth.pairs)} pairs ({sources}) in {path}")
    for skipped in synth.skipped_rules:
        print(f"  no pairs: {skipped}")
    return 0


def command_train_persona_chat(args: argparse.Namespace) -> int:
    from finetune.persona_chat import ADAPTER_ID, persona_card, training_files
    from finetune.train import TrainError

    if not args.spc.exists():
        raise TrainError(f"{args.spc}: no Synthetic-Persona-Chat CSV there (give one with --spc)")
    config = load_config()
    data_dir = config.data_path / ADAPTER_ID
    training_files(args.spc, data_dir, dialogues=args.dialogues)
    card = persona_card(None, ADAPTER_ID)
    return run_training(args, card, config, data_dir=data_dir, out_dir=args.out)


def run_training(
    args: argparse.Namespace, character: Character, config: Config, *, data_dir: Path, out_dir: Path
) -> int:
    from finetune.train import train

    recipe = load_recipe(args.recipe, Recipe, **recipe_overrides(args))
    result = train(
        character,
        data_dir=data_dir,
        out_dir=out_dir,
        recipe=recipe,
        config=config,
        work_dir=config.data_path / "training",
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    if result.resumed_from_step:
        print(f"resumed from the checkpoint at step {result.resumed_from_step}")
    print(
        f"{character.name}: {result.steps} steps on {result.train_examples} examples in "
        f"{result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); eval loss "
        f"{result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f}; adapter in "
        f"{result.adapter_path}"
    )
    return 0


def command_chat(args: argparse.Namespace) -> int:
    from bot.console import run_console

    asyncio.run(
        run_console(args.character, args.name, adapter=args.adapter, channel_id="finetune-chat")
    )
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from bot.characters import CharacterRegistry
    from finetune.compare import compare

    config = load_config()
    character = CharacterRegistry.load(config.characters_path).get(args.character)
    adapter = args.adapter or adapter_dir(config.characters_path, character.id)
    for row in compare(character, args.messages, adapter=adapter, config=config):
        print(f"> {row.prompt}")
        print(f"  card only:      {row.card_only}")
        print(f"  card + adapter: {row.with_adapter}\n")
    return 0


def command_samples(args: argparse.Namespace) -> int:
    from bot.characters import CharacterRegistry
    from finetune.samples import sample_answers

    if args.n < 1:
        raise FinetuneError(f"-n {args.n}: give at least 1 sample per message")
    config = load_config()
    registry = CharacterRegistry.load(config.characters_path)
    character = registry.get(args.character)
    after = args.after_adapter
    if after is not None and not (after / "adapter_config.json").is_file():
        raise FinetuneError(f"--after-adapter {after}: no adapter there (no adapter_config.json)")
    if after is not None and character.adapter_path is None:
        raise FinetuneError(f"{character.id} has no adapter of its own to compare {after} with")
    rows = sample_answers(config, registry, character, args.messages, args.n, after)
    generation = config.generation
    if after is None:
        print(
            f"after: candidates {generation.candidates}, persona_guidance "
            f"{generation.persona_guidance}, rule guards; temperature {generation.temperature}"
        )
    else:
        print(
            f"before: {character.adapter_path}; after: {after}; both one sample, no guards, "
            f"no guidance; temperature {generation.temperature}"
        )
    for message in args.messages:
        print(f"\n> {message}")
        for setup in ("before", "after"):
            mine = [r for r in rows if r.message == message and r.setup == setup]
            mean = sum(r.seconds for r in mine) / len(mine)
            print(f"  {setup} ({mean:.1f} s per reply):")
            for row in mine:
                action = f" [{row.guard_action}]" if row.guard_action else ""
                print(f"    {row.seed}. {row.text}{action}")
    return 0


def command_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from bot.characters import CharacterRegistry
    from finetune.eval_report import headline_table
    from finetune.evaluate import EvalOptions, run_eval

    config = load_config()
    registry = CharacterRegistry.load(config.characters_path)
    if args.characters:
        characters = [registry.get(name) for name in args.characters]
    else:
        characters = [c for c in registry if c.has_adapter]
    options = EvalOptions.quick() if args.quick else EvalOptions()
    if args.prompts:
        options = dataclasses.replace(options, prompts=args.prompts)
    if args.spc_dialogues:
        options = dataclasses.replace(options, spc_dialogues=args.spc_dialogues)
    if args.only == "lore":
        from finetune.eval_lore import lore_markdown, run_lore
        from finetune.evaluate import load_engine

        engine = load_engine(config, characters)
        section = run_lore(characters, engine=engine, config=config, options=options)
        print(lore_markdown(section))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "lore.json").write_text(json.dumps(section, indent=2) + "\n")
            (args.out / "lore.md").write_text(lore_markdown(section))
            print(f"figures: {args.out / 'lore.json'}")
        return 0
    if args.only == "likelihood":
        from finetune.evaluate import likelihood_table, run_likelihood

        section = run_likelihood(characters, config=config, options=options, out_dir=args.out)
        print(likelihood_table(section, [c.id for c in characters]))
        if args.out:
            print(f"figures: {args.out / 'likelihood.json'}")
        return 0
    out_dir = args.out or PROJECT_ROOT / "docs" / "report"
    report = run_eval(
        characters,
        config=config,
        out_dir=out_dir,
        options=options,
        spc_path=args.spc,
        persona_chat_adapter=args.persona_chat_adapter,
    )
    print(headline_table(report))
    print(f"report: {out_dir / 'report.md'}")
    return 0


def command_eval_adapters(args: argparse.Namespace) -> int:
    from bot.characters import CharacterRegistry
    from finetune.eval_adapters import adapter_folder, default_options, run_eval_adapters
    from finetune.eval_adapters_report import headline_table

    config = load_config()
    root = config.characters_path
    registry = CharacterRegistry.load(root)
    if args.characters:
        characters = [registry.get(name) for name in args.characters]
    else:
        characters = [
            c
            for c in registry
            if all(
                (adapter_folder(root, c.id, name) / "adapter_config.json").is_file()
                for name in (args.before, args.after)
            )
        ]
        if not characters:
            raise FinetuneError(
                f"no character has both {args.before}/ and {args.after}/ adapters; name the "
                f"characters, or train the after ones with `python -m finetune train ID "
                f"--method dpo --out characters/ID/{args.after}`"
            )
    options = default_options(quick=args.quick, prompts=args.prompts)
    out_dir = args.out or PROJECT_ROOT / "docs" / "report" / "adapters"
    report = run_eval_adapters(
        characters,
        config=config,
        out_dir=out_dir,
        options=options,
        before=args.before,
        after=args.after,
        others=registry,
        spc_path=args.spc,
    )
    print(headline_table(report))
    print(f"report: {out_dir / 'adapters.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    logging.getLogger("finetune").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from bot.characters import CharacterError
    from bot.engine import AdapterError
    from bot.engine.loading import ModelLoadError

    commands = {
        "build": command_build,
        "train": command_train,
        "preferences": command_preferences,
        "train-persona-chat": command_train_persona_chat,
        "chat": command_chat,
        "compare": command_compare,
        "samples": command_samples,
        "eval": command_eval,
        "eval-adapters": command_eval_adapters,
        **lore_cli.COMMANDS,
    }
    try:
        return commands[args.command](args)
    except (
        FinetuneError,
        RecordError,
        CharacterError,
        ConfigError,
        AdapterError,
        ModelLoadError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; `train` resumes from its last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

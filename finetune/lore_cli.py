"""The lore commands of `python -m finetune`: their flags beside their dispatch.

lore ID MESSAGE [--history TEXT ...]   which entries fire for a message and why, and the prompt
knowledge ID [--samples N]             knowledge pairs from the lore entries (model needed)
import-lorebook FILE --name NAME       a SillyTavern World Info JSON -> characters/_lorebooks/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.config import load_config
from bot.history import Turn


def add_parsers(sub: argparse._SubParsersAction) -> None:
    view = sub.add_parser(
        "lore",
        help="which lore entries a message fires, and why (key or similarity), and the prompt",
        description="The creator's view of lore: for a character and a message (after optional "
        "history lines), each entry that fires with its reason (the key that matched, or the "
        "similarity score), the ones left out by the budget, and the final prompt.",
    )
    view.add_argument("character", help="character id, name or alias")
    view.add_argument("message", help="the new message")
    view.add_argument(
        "--history",
        nargs="*",
        default=[],
        metavar="'NAME: TEXT'",
        help="earlier turns, oldest first; a turn by the character starts with its name",
    )
    view.add_argument("--no-prompt", action="store_true", help="entries only, not the prompt")

    knowledge = sub.add_parser(
        "knowledge",
        help="knowledge pairs from the character's lore entries -> data/knowledge.jsonl",
        description="Ask each lore entry's training questions with the entry in the prompt, "
        "sample answers with the character's adapter, keep those that state the entry's fact "
        "and pass the card's guards; `train` uses them beside train.jsonl.",
    )
    knowledge.add_argument("character", help="character id, name or alias")
    knowledge.add_argument("--samples", type=int, default=6, help="answers per question [6]")
    knowledge.add_argument("--seed", type=int, default=0)

    lorebook = sub.add_parser(
        "import-lorebook",
        help="a SillyTavern World Info JSON file -> characters/_lorebooks/NAME.yaml",
        description="Import a World Info file as a shared lorebook; fields with no equivalent "
        "here are listed in the summary. Cards name it in `lorebooks: [NAME]`.",
    )
    lorebook.add_argument("file", type=Path)
    lorebook.add_argument("--name", required=True, help="the lorebook's file name (no .yaml)")
    lorebook.add_argument("--force", action="store_true", help="overwrite an existing lorebook")


def _turn(line: str, character_names: list[str], character_id: str):

    author, _, text = line.partition(":")
    if not text:
        author, text = "User", line
    author, text = author.strip(), text.strip()
    if author.casefold() in {n.casefold() for n in character_names}:
        return Turn("character", author, text, character_id=character_id)
    return Turn("user", author, text, character_id=character_id)


def command_lore(args: argparse.Namespace) -> int:
    from bot.characters import CharacterRegistry
    from bot.context import PromptAssembler
    from bot.tokenizer import load_tokenizer

    config = load_config()
    registry = CharacterRegistry.load(config.characters_path)
    character = registry.get(args.character)
    assembler = PromptAssembler.from_config(load_tokenizer(config), config, [character])
    history = [_turn(line, character.names, character.id) for line in args.history]
    message = _turn(args.message, [], character.id)
    selection = assembler.lore(character, history, message)
    print(f"{character.name}: {len(character.lore_entries)} lore entries")
    if not selection.kept and not selection.dropped:
        print("no entry fires for this message")
    for hit in selection.kept:
        print(f"  fires   {hit.entry.id:<28} {hit.why}")
    for hit in selection.dropped:
        print(f"  dropped {hit.entry.id:<28} {hit.why} (over prompt.lore_budget)")
    if not args.no_prompt:
        prompt = assembler.build(character, history, message)
        print(f"\n--- prompt ({prompt.token_count} tokens) ---\n{prompt.text}")
    return 0


def command_knowledge(args: argparse.Namespace) -> int:
    from bot.characters import CharacterRegistry
    from bot.engine import InferenceEngine
    from bot.training_data import DatasetFiles
    from finetune.knowledge import KnowledgeOptions, knowledge_pairs, write_knowledge

    config = load_config()
    registry = CharacterRegistry.load(config.characters_path)
    character = registry.get(args.character)
    engine = InferenceEngine.from_config(config)
    if character.adapter_path is not None:
        engine.load_adapter(character.id, character.adapter_path)
    options = KnowledgeOptions(samples=args.samples, seed=args.seed)
    result = knowledge_pairs(character, engine, config, options, list(registry))
    files = DatasetFiles.of(config.characters_path, character.id)
    write_knowledge(files, character, result, options)
    s = result.summary()
    print(
        f"{character.id}: {s['questions']} questions, {s['answers_kept']} of "
        f"{s['answers_sampled']} answers kept, {s['records']} records -> {files.knowledge}"
    )
    for entry, questions in s["unanswered"].items():
        print(f"  no answer kept for {entry}: {'; '.join(questions)}")
    return 0


def command_import_lorebook(args: argparse.Namespace) -> int:
    from finetune.lorebooks import import_world_info

    config = load_config()
    summary = import_world_info(args.file, config.characters_path, args.name, force=args.force)
    print(summary.text())
    return 0


COMMANDS = {
    "lore": command_lore,
    "knowledge": command_knowledge,
    "import-lorebook": command_import_lorebook,
}

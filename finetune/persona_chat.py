"""Synthetic-Persona-Chat: dialogues as next-turn examples, split so evaluation never trains.

Each CSV row is one dialogue between "User 1" and "User 2", each with a persona. The
persona-injection protocol asks a model for User 2's next turn given User 2's persona and the
context. Rows are split by position: every `HELD_OUT_EVERY`-th row (0, 5, 10, ...) is held out
for the report (`finetune eval`); only the others may train the persona-chat adapter
(`python -m finetune train-persona-chat`).

A record here is a `TrainingRecord` with `persona` (the speaker's persona, which
`finetune.examples` puts in the card's description, so one adapter learns from many personas and
is judged on personas it never saw) and `row`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.characters import Character
from bot.config import PROJECT_ROOT
from bot.history import Turn
from bot.training_data import DatasetFiles, TrainingRecord, write_records
from finetune.examples import EncodedExample, encode_all
from finetune.sources import read_spc_rows, spc_turns

DEFAULT_ADAPTER = PROJECT_ROOT / "finetune" / "persona-chat" / "adapter"
HELD_OUT_EVERY = 5
SPEAKER = "User 2"  # who the model plays; "User 1" is the user
ADAPTER_ID = "persona-chat"
NO_PERSONA = "A person in a conversation."
# A record (a persona, a dialogue so far, one User 2 turn) is short: 1024 tokens hold the prompts
# the report scores and damage-guards, so they keep their context.
MAX_SEQ_LEN = 1024


@dataclass(frozen=True)
class Dialogue:
    index: int  # the row, 0 = first data row
    personas: dict[str, list[str]]
    turns: list[tuple[str, str]]  # (speaker, text)


def read_dialogues(path: Path) -> list[Dialogue]:
    """Every row's turns, read as `finetune build` reads them (`finetune.sources.spc_turns`)."""
    dialogues = []
    for row in read_spc_rows(path):
        lines, _ = spc_turns(row, str(path))
        dialogues.append(Dialogue(row.index, row.personas, [(x.speaker, x.text) for x in lines]))
    return dialogues


def is_held_out(dialogue: Dialogue) -> bool:
    return dialogue.index % HELD_OUT_EVERY == 0


def persona_card(persona: str | None, id: str = "persona") -> Character:
    """The card User 2 is prompted with: its persona, or (None) nothing about who it is."""
    return Character(id=id, name=SPEAKER, description=persona or NO_PERSONA, greeting="Hi!")


def next_turn_records(dialogue: Dialogue, *, context_turns: int = 4) -> list[TrainingRecord]:
    """User 2's turns that answer something, each with up to `context_turns` turns before it."""
    answers = [i for i, (speaker, _) in enumerate(dialogue.turns) if speaker == SPEAKER and i > 0]
    records = []
    for i in answers:
        context = tuple(
            Turn("character" if s == SPEAKER else "user", s, text, timestamp=0.0)
            for s, text in dialogue.turns[max(0, i - context_turns) : i]
        )
        if context[-1].role != "user":
            continue  # two User 2 turns in a row: nothing to answer
        records.append(
            TrainingRecord(
                id=f"row{dialogue.index}-turn{i}",
                context=context,
                reply=dialogue.turns[i][1],
                persona=" ".join(dialogue.personas.get(SPEAKER, [])) or NO_PERSONA,
                row=dialogue.index,
            )
        )
    return records


def protocol_records(dialogues: list[Dialogue]) -> list[TrainingRecord]:
    """One User 2 turn per dialogue: the middle one, past the greetings and before the
    goodbyes, where the persona has something to say."""
    records = []
    for dialogue in dialogues:
        turns = next_turn_records(dialogue)
        records += turns[len(turns) // 2 : len(turns) // 2 + 1]
    return records


def anchor_records(spc_path: Path, count: int) -> list[TrainingRecord]:
    """The middle User 2 turn of the first `count` training dialogues (rows not held out):
    ordinary conversation for DPO's anchor (`finetune.dpo_anchor`)."""
    rows = [d for d in read_dialogues(spc_path) if not is_held_out(d)]
    return protocol_records(rows[:count])


def encode_records(
    records: Sequence[TrainingRecord], tokenizer: Any, *, persona: bool = True
) -> list[EncodedExample]:
    """Each record prompted as User 2, with its persona as the card or (not `persona`) none:
    as the report's damage guard scores them and DPO's anchor holds them."""
    if not persona:
        records = [dataclasses.replace(r, persona=None) for r in records]
    examples, _ = encode_all(records, persona_card(None), tokenizer, max_seq_len=MAX_SEQ_LEN)
    return examples


def training_files(
    spc_path: Path, out_dir: Path, *, dialogues: int, eval_dialogues: int = 5
) -> tuple[Path, Path]:
    """train.jsonl from the first `dialogues` training rows; eval.jsonl (for the trainer's eval
    loss) from the last `eval_dialogues` held-out rows, which the report's first rows never
    reach."""
    rows = read_dialogues(spc_path)
    train_rows = [d for d in rows if not is_held_out(d)][:dialogues]
    eval_rows = [d for d in rows if is_held_out(d)][-eval_dialogues:]
    files = DatasetFiles(out_dir)
    write_records(files.train, [r for d in train_rows for r in next_turn_records(d)])
    write_records(files.eval, [r for d in eval_rows for r in next_turn_records(d)])
    return files.train, files.eval

"""A character's training data: where its files live, and the one type of a training record.

`finetune build` writes records, `finetune train`/`eval` read them, and the bot reads the
training lines for retrieved few-shot examples; all of them go through `TrainingRecord` and
`DatasetFiles`, so the format and the paths are spelled here only. (The bot cannot import
`finetune`, hence this module lives in `bot/`.)

One JSON line: {"id", "scene", "source": "file:line", "context": [{"role", "author", "text"}],
"reply"}, plus "persona" and "row" for Synthetic-Persona-Chat records (each dialogue has its own
persona), and "lore": false for a record prompted without lore entries (knowledge pairs).
`scene` and `source` are left out when a record has none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.files import write_text_atomically
from bot.history import ROLES, Turn


class RecordError(ValueError):
    """A line that is not a training record; the message names file and line."""


class _InFolder:
    """A path inside the dataset folder, read as an attribute: `files.train`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, files: DatasetFiles, owner: type) -> Path:
        return files.folder.joinpath(*self.parts)


@dataclass(frozen=True)
class DatasetFiles:
    """The files of one dataset folder (by default `characters/<id>/data`)."""

    folder: Path

    train = _InFolder("train.jsonl")
    eval = _InFolder("eval.jsonl")
    card_markdown = _InFolder("dataset_card.md")
    card_json = _InFolder("dataset_card.json")
    # A character's committed dialogue sources and rule probes.
    sources = _InFolder("sources")
    probes = _InFolder("sources", "probes.yaml")
    # Knowledge pairs from the lore entries (`finetune knowledge`), trained beside train.jsonl.
    knowledge = _InFolder("knowledge.jsonl")
    # Preference pairs for DPO (`finetune preferences export | synth`; names of the files in
    # it: `finetune.preference_data`).
    preferences = _InFolder("preferences")

    @classmethod
    def of(cls, characters_dir: Path, character_id: str) -> DatasetFiles:
        return cls(characters_dir / character_id / "data")


@dataclass(frozen=True)
class TrainingRecord:
    id: str
    context: tuple[Turn, ...]  # the turns before the reply, oldest first
    reply: str
    scene: str | None = None
    source: str | None = None  # the file the reply comes from
    line: int | None = None  # its line in that file
    persona: str | None = None  # the speaker's own persona (Synthetic-Persona-Chat)
    row: int | None = None  # the CSV data row (Synthetic-Persona-Chat)
    # False: prompted without lore entries (knowledge pairs teach the fact both ways: with the
    # entry in the prompt, as served, and without, for when retrieval misses).
    lore: bool = True

    @property
    def message(self) -> Turn | None:
        """The turn the reply answers: the last context turn when a user spoke it."""
        if self.context and self.context[-1].role == "user":
            return self.context[-1]
        return None

    @property
    def location(self) -> str:
        """`file:line` of the reply (as written in the JSON), or the file alone."""
        return f"{self.source}:{self.line}" if self.line is not None else str(self.source)

    def to_json(self) -> str:
        data: dict[str, Any] = {"id": self.id}
        if self.scene is not None:
            data["scene"] = self.scene
        if self.source is not None:
            data["source"] = self.location
        data["context"] = [
            {"role": t.role, "author": t.author, "text": t.content} for t in self.context
        ]
        data["reply"] = self.reply
        if self.persona is not None:
            data["persona"] = self.persona
        if self.row is not None:
            data["row"] = self.row
        if not self.lore:
            data["lore"] = False
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> TrainingRecord:
        """Parse one line; RecordError (ValueError) says what is wrong with it."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RecordError(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        context = data.get("context")
        if not isinstance(context, list):
            raise RecordError('"context" must be a list of {"role", "author", "text"}')
        turns = []
        for i, turn in enumerate(context):
            if not isinstance(turn, dict) or turn.get("role") not in ROLES:
                raise RecordError(f"context[{i}]: role must be one of {', '.join(ROLES)}")
            if not isinstance(turn.get("author"), str) or not isinstance(turn.get("text"), str):
                raise RecordError(f'context[{i}]: "author" and "text" must be strings')
            turns.append(Turn(turn["role"], turn["author"], turn["text"], timestamp=0.0))
        if not isinstance(data.get("reply"), str):
            raise RecordError('"reply" must be a string')
        source, line = data.get("source"), None
        if isinstance(source, str):
            path, _, number = source.rpartition(":")
            if path and number.isdigit():
                source, line = path, int(number)
        return cls(
            id=str(data.get("id", "")),
            context=tuple(turns),
            reply=data["reply"],
            scene=data.get("scene"),
            source=source,
            line=line,
            persona=data.get("persona"),
            row=data.get("row"),
            lore=data.get("lore", True) is not False,
        )


def read_records(path: Path) -> list[TrainingRecord]:
    """Every record of a JSONL file; RecordError names the first bad line."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(TrainingRecord.from_json(line))
        except RecordError as exc:
            raise RecordError(
                f"{path}:{number}: not a training record: {exc}; expected one JSON object per "
                'line: {"context": [{"role", "author", "text"}, ...], "reply": "..."}'
            ) from None
    return records


def records_text(records: Iterable[TrainingRecord]) -> str:
    return "".join(record.to_json() + "\n" for record in records)


def write_records(path: Path, records: Iterable[TrainingRecord]) -> None:
    write_text_atomically(path, records_text(records))

"""JSON lines (`.jsonl`) -> scenes.

One object per line, each line its own scene:
* Q&A: `{"user": "...", "character": "..."}` -> "User" then the character.
* chat: `{"scene": "optional id", "messages": [{"name": "Krillin", "content": "..."}, ...]}`;
  a message may give `role` (`user` -> "User", `assistant` -> the character, `system` skipped)
  instead of `name`. Lines with the same `scene` value form one split group.
"""

from __future__ import annotations

import json
from pathlib import Path

from finetune.sources.common import (
    USER,
    Dropped,
    Line,
    ParsedSource,
    ParseOptions,
    Scene,
    located,
    read_text,
)

_JSONL_ALLOWED = (
    'each line is {"user": "...", "character": "..."} or '
    '{"scene": "id", "messages": [{"name": "...", "content": "..."}, ...]}'
)


def parse_jsonl(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    raw = read_text(path).split("\n")
    scenes: list[Scene] = []
    dropped: list[Dropped] = []
    seen_ids: set[str] = set()
    for number, text in enumerate(raw, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise located(
                src, number, f"malformed JSON ({exc.msg} at column {exc.colno})", _JSONL_ALLOWED
            ) from None
        if not isinstance(record, dict):
            raise located(src, number, "not a JSON object", _JSONL_ALLOWED)
        if "messages" in record:
            messages = record["messages"]
            if not isinstance(messages, list) or not messages:
                raise located(src, number, "'messages' must be a non-empty list", _JSONL_ALLOWED)
            label = record.get("scene")
            group = f"{src}:{label}" if label not in (None, "") else f"{src}#{number}"
            scene_id = group if group not in seen_ids else f"{group}#{number}"
            seen_ids.add(scene_id)
            scene = Scene(scene_id, group=group)
            for index, message in enumerate(messages):
                speaker = _message_speaker(message, options, src, number, index)
                if speaker is None:
                    dropped.append(Dropped("system message", src, number, str(message)[:80]))
                    continue
                scene.lines.append(Line(speaker, message["content"], src, number))
            scenes.append(scene)
        elif "user" in record and "character" in record:
            if not all(isinstance(record[k], str) for k in ("user", "character")):
                raise located(src, number, "'user' and 'character' must be strings", _JSONL_ALLOWED)
            scenes.append(
                Scene(
                    f"{src}#{number}",
                    [
                        Line(USER, record["user"], src, number),
                        Line(options.character_name, record["character"], src, number),
                    ],
                )
            )
        else:
            keys = ", ".join(sorted(record)) or "none"
            raise located(src, number, f"unknown record (keys: {keys})", _JSONL_ALLOWED)
    if not scenes:
        raise located(src, 1, "no records", _JSONL_ALLOWED)
    return ParsedSource(src, ".jsonl", scenes, dropped, len(raw))


def _message_speaker(
    message: object, options: ParseOptions, src: str, number: int, index: int
) -> str | None:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise located(src, number, f"{where} needs a string 'content'", _JSONL_ALLOWED)
    name = message.get("name")
    if isinstance(name, str) and name.strip():
        return " ".join(name.split())
    role = message.get("role")
    if role == "user":
        return USER
    if role == "assistant":
        return options.character_name
    if role == "system":
        return None
    raise located(
        src, number, f"{where} has no 'name'", "give 'name', or 'role' user/assistant/system"
    )

"""Dataset records -> token ids and loss masks, rendered exactly as the bot prompts.

A record (one line of `train.jsonl`, written by `finetune build`) is a window of turns and the
character's reply; a record with a `persona` (Synthetic-Persona-Chat: every dialogue has its own)
is prompted with that persona as the card's description. Its prompt comes from
`bot.prompt.build_prompt`, the function the bot uses at inference: system card, few-shot
examples, history, the last turn as the new message, the model's chat template. The target is
what the template puts after the prompt for the reply: the reply text and the end-of-turn token
(so the model learns to stop), never a speaker name. Loss is computed on the target only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.characters import Character
from bot.history import Turn
from bot.prompt import build_prompt, render
from finetune.errors import FinetuneError

IGNORE = -100  # label of tokens that carry no loss


class ExampleError(FinetuneError, ValueError):
    pass


@dataclass(frozen=True)
class EncodedExample:
    id: str
    prefix: tuple[int, ...]  # the card part shared by every example of the character
    body: tuple[int, ...]  # the rest of the prompt, then the target
    target_len: int  # the last target_len tokens of body carry loss

    @property
    def labels(self) -> list[int]:
        prompt_len = len(self.body) - self.target_len
        return [IGNORE] * prompt_len + list(self.body[prompt_len:])

    def __len__(self) -> int:
        return len(self.prefix) + len(self.body)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The examples of a `finetune build` JSONL file; ExampleError names a bad line."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            context = [Turn(t["role"], t["author"], t["text"]) for t in record["context"]]
            record["turns"] = context
            str(record["reply"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ExampleError(
                f"{path}:{number}: not an example written by `finetune build` ({exc!r}); "
                'expected {"context": [{"role", "author", "text"}, ...], "reply": "..."}'
            ) from None
        records.append(record)
    return records


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def encode_example(
    record: dict[str, Any], character: Character, tokenizer: Any, *, max_seq_len: int
) -> EncodedExample | None:
    """Token ids of one record; None when it has no user turn to answer."""
    turns: list[Turn] = record["turns"]
    if not turns or turns[-1].role != "user":
        return None
    message, history = turns[-1], turns[:-1]
    reply = record["reply"].strip()
    if record.get("persona"):
        character = character.model_copy(update={"description": str(record["persona"])})
    # The target: what the chat template writes for this reply after the generation prompt.
    probe = build_prompt(character, [], message, tokenizer=tokenizer, budget=10**9)
    full = render(tokenizer, [*probe.messages, {"role": "assistant", "content": reply}], False)
    if not full.startswith(probe.text):
        raise ExampleError("the chat template does not render a reply after its prompt")
    target = _ids(tokenizer, full[len(probe.text) :].rstrip("\n"))
    budget = max_seq_len - len(target)
    prompt = build_prompt(character, history, message, tokenizer=tokenizer, budget=budget)
    prompt_ids = _ids(tokenizer, prompt.text)
    if len(prompt_ids) + len(target) > max_seq_len:
        # Even the card and a trimmed message do not leave room: cut the reply's end.
        target = target[: max(1, max_seq_len - len(prompt_ids))]
    # The shared prefix: system message and the few-shot examples kept for this example.
    n_examples = sum(2 * len(d) for d in character.examples[: prompt.examples_used])
    prefix_text = render(tokenizer, prompt.messages[: 1 + n_examples], generation=False)
    prefix = _ids(tokenizer, prefix_text)
    if not prompt.text.startswith(prefix_text) or prompt_ids[: len(prefix)] != prefix:
        prefix = []  # a template that is not additive: no sharing for this example
    return EncodedExample(
        id=str(record.get("id", "")),
        prefix=tuple(prefix),
        body=tuple(prompt_ids[len(prefix) :] + target),
        target_len=len(target),
    )


def encode_all(
    records: Iterable[dict[str, Any]], character: Character, tokenizer: Any, *, max_seq_len: int
) -> tuple[list[EncodedExample], int]:
    """Encoded examples, and how many records were skipped (no user turn before the reply)."""
    encoded, skipped = [], 0
    for record in records:
        example = encode_example(record, character, tokenizer, max_seq_len=max_seq_len)
        if example is None:
            skipped += 1
        else:
            encoded.append(example)
    return encoded, skipped


def show_masks(example: EncodedExample, tokenizer: Any) -> str:
    """The example as text: masked tokens plain, trained tokens inside [[...]]."""
    prompt_len = len(example.body) - example.target_len
    masked = tokenizer.decode(list(example.prefix) + list(example.body[:prompt_len]))
    trained = tokenizer.decode(list(example.body[prompt_len:]))
    return f"{masked}[[{trained}]]"

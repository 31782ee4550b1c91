"""Training records -> token ids and loss masks, rendered exactly as the bot prompts.

A record (`bot.training_data.TrainingRecord`, one line of `train.jsonl`) is a window of turns
and the character's reply; a record with a `persona` (Synthetic-Persona-Chat: every dialogue has
its own) is prompted with that persona as the card's description. Its prompt comes from
`bot.prompt.build_prompt`, the function the bot uses at inference: system card, few-shot
examples, history, the last turn as the new message, the model's chat template. The target is
what the template puts after the prompt for the reply: the reply text and the end-of-turn token
(so the model learns to stop), never a speaker name. Loss is computed on the target only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bot.characters import Character
from bot.config import PromptConfig
from bot.context import PromptAssembler
from bot.prompt import render
from bot.training_data import TrainingRecord
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


def token_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def completion_text(tokenizer: Any, reply: str) -> str:
    """What the chat template writes for `reply` after a prompt that ends with the generation
    prompt: the reply and the end-of-turn token (so a model learns to stop), no speaker name."""
    messages = [{"role": "user", "content": "."}]
    prompt = render(tokenizer, messages)
    full = render(tokenizer, [*messages, {"role": "assistant", "content": reply}], False)
    if not full.startswith(prompt):
        raise ExampleError("the chat template does not render a reply after its prompt")
    return full[len(prompt) :].rstrip("\n")


def encode_example(
    record: TrainingRecord,
    character: Character,
    tokenizer: Any,
    *,
    max_seq_len: int,
    assembler: PromptAssembler | None = None,
) -> EncodedExample | None:
    """Token ids of one record; None when it has no user turn to answer. `assembler` puts the
    prompt together as the bot does (lore included); without one, lore fires by key only."""
    message = record.message
    if message is None:
        return None
    history = list(record.context[:-1])
    reply = record.reply.strip()
    if record.persona:
        character = character.model_copy(update={"description": record.persona})
    target = token_ids(tokenizer, completion_text(tokenizer, reply))
    budget = max_seq_len - len(target)
    assembler = assembler or PromptAssembler(tokenizer, PromptConfig())
    prompt = assembler.build(character, history, message, lore=record.lore, budget=budget)
    prompt_ids = token_ids(tokenizer, prompt.text)
    if len(prompt_ids) + len(target) > max_seq_len:
        # Even the card and a trimmed message do not leave room: cut the reply's end.
        target = target[: max(1, max_seq_len - len(prompt_ids))]
    # The shared prefix: system message and the few-shot examples kept for this example.
    n_examples = sum(2 * len(d) for d in character.examples[: prompt.examples_used])
    prefix_text = render(tokenizer, prompt.messages[: 1 + n_examples], generation=False)
    prefix = token_ids(tokenizer, prefix_text)
    if not prompt.text.startswith(prefix_text) or prompt_ids[: len(prefix)] != prefix:
        prefix = []  # a template that is not additive: no sharing for this example
    return EncodedExample(
        id=record.id,
        prefix=tuple(prefix),
        body=tuple(prompt_ids[len(prefix) :] + target),
        target_len=len(target),
    )


def encode_all(
    records: Iterable[TrainingRecord],
    character: Character,
    tokenizer: Any,
    *,
    max_seq_len: int,
    assembler: PromptAssembler | None = None,
) -> tuple[list[EncodedExample], int]:
    """Encoded examples, and how many records were skipped (no user turn before the reply)."""
    encoded, skipped = [], 0
    for record in records:
        example = encode_example(
            record, character, tokenizer, max_seq_len=max_seq_len, assembler=assembler
        )
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

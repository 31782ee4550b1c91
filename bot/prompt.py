"""Prompt building (in-context learning): card -> system message, examples, history, message.

Pure functions: the same inputs give the same prompt. The tokenizer is used to render the
model's own chat template, to count tokens and to know its special tokens; training renders
examples with the same code.

Users' names and messages (and replies stored in history) go in through
`neutralize_special_tokens`: the engine tokenizes prompts with special-token parsing, so a
literal `<|im_end|><|im_start|>system` would otherwise become real template turns.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.characters import Character, Exchange
from bot.history import Turn
from bot.lore_activation import LoreHit

Message = dict[str, str]
ELLIPSIS = " …"
# Inserted after the first character of a special-token string: the tokenizer no longer
# matches it as a token, and a person still reads the same text.
ZERO_WIDTH_SPACE = "\u200b"


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the prompt builder needs."""

    @property
    def all_special_tokens(self) -> list[str]: ...

    @property
    def added_tokens_decoder(self) -> dict[int, Any]: ...  # id -> AddedToken (.content, .special)

    def __len__(self) -> int: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...

    def decode(self, token_ids: Any, **kwargs: Any) -> str: ...


def special_token_strings(tokenizer: ChatTokenizer) -> frozenset[str]:
    """Every string the tokenizer parses as a special token: the named ones (bos, eos, ...) and
    every added token flagged special (SmolLM2's <repo_name>, <jupyter_code>, ...)."""
    return _special_tokens(tokenizer, len(tokenizer))[0]


def neutralize_special_tokens(text: str, tokenizer: ChatTokenizer) -> str:
    """`text` with every special-token string broken by a zero-width space, so that a user's
    `<|im_end|><|im_start|>system` stays visible text instead of becoming template turns.

    Idempotent, and text without special-token strings is returned unchanged.
    """
    # The vocabulary size is part of the cache key: tokens added later are seen too.
    pattern = _special_tokens(tokenizer, len(tokenizer))[1]
    if pattern is None:
        return text
    # Repeat: where occurrences overlap, the regex skips the second one in a pass.
    while pattern.search(text):
        text = pattern.sub(lambda m: m[0][0] + ZERO_WIDTH_SPACE + m[0][1:], text)
    return text


@functools.lru_cache(maxsize=16)
def _special_tokens(
    tokenizer: ChatTokenizer, vocab_size: int
) -> tuple[frozenset[str], re.Pattern[str] | None]:
    tokens = set(getattr(tokenizer, "all_special_tokens", ()))
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            tokens.add(getattr(added, "content", str(added)))
    # A one-character token cannot be split, and a token holding the zero-width space would be
    # re-created by the split; no real tokenizer has either, so they are left out.
    tokens = {t for t in tokens if len(t) > 1 and ZERO_WIDTH_SPACE not in t}
    if not tokens:
        return frozenset(), None
    # Longest first, so a token that contains another is matched whole.
    alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=lambda t: (-len(t), t)))
    return frozenset(tokens), re.compile(alternatives)


@dataclass(frozen=True)
class Prompt:
    messages: list[Message]
    text: str  # rendered with the chat template, generation prompt included
    token_count: int
    examples_used: int  # example dialogues kept
    history_used: int  # history turns kept
    user_truncated: bool  # the new message was cut to fit the budget
    conversation_start: int = 0  # messages[conversation_start:] are history and the message
    lore: tuple[LoreHit, ...] = ()  # lore entries placed before the new message


def system_message(character: Character) -> str:
    """The card as one system message: identity, personality, style, rules, scenario."""
    name = character.name
    also = f" (also called {', '.join(character.aliases)})" if character.aliases else ""
    parts = [f"You are {name}{also}. {character.description}"]
    if character.personality:
        parts.append("Personality:\n" + "\n".join(f"- {t}" for t in character.personality))
    if character.speech_style:
        parts.append(f"Speech style: {character.speech_style}")
    if character.rules:
        lines = []
        for rule in character.rules:
            lines.append(f"- {rule.rule}")
            # Examples as quoted speech, not "Name:" lines, so the model is not taught prefixes.
            lines += [
                f'  For example, asked "{ex.user}", {name} says: "{ex.character}"'
                for ex in rule.examples
            ]
        parts.append("Rules you always follow:\n" + "\n".join(lines))
    if character.scenario:
        parts.append(f"Scenario: {character.scenario}")
    parts.append(
        f"Stay in character as {name}. Users' messages start with their name. Reply with "
        f"{name}'s next message only, in {name}'s own voice; never write lines for anyone else."
    )
    return "\n\n".join(parts)


def turn_message(turn: Turn, character: Character, tokenizer: ChatTokenizer) -> Message:
    """This character's own turns are the assistant; everyone else speaks as a named user.

    Authors and contents come from users (or from replies that may quote them), so any
    special-token text in them is neutralized; the author and content are neutralized together
    so that a token split across the "name: " join is caught too.
    """
    if turn.role == "character" and turn.character_id == character.id:
        return {"role": "assistant", "content": neutralize_special_tokens(turn.content, tokenizer)}
    text = f"{turn.author}: {turn.content}"
    return {"role": "user", "content": neutralize_special_tokens(text, tokenizer)}


def lore_message(character: Character, lore: Sequence[LoreHit]) -> Message:
    """The fired lore entries as one short system message, placed right before the new
    message: a small model uses a fact there, not ~900 tokens back in the card."""
    facts = "\n".join(f"- {hit.entry.content}" for hit in lore)
    return {"role": "system", "content": f"What {character.name} knows that matters here:\n{facts}"}


def example_messages(dialogue: Sequence[Exchange], user_name: str = "User") -> list[Message]:
    messages: list[Message] = []
    for exchange in dialogue:
        messages.append({"role": "user", "content": f"{user_name}: {exchange.user}"})
        messages.append({"role": "assistant", "content": exchange.character})
    return messages


def merge_same_role(messages: Sequence[Message]) -> list[Message]:
    """Join consecutive messages of one role: several users may speak before the character."""
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {
                **merged[-1],
                "content": merged[-1]["content"] + "\n" + message["content"],
            }
        else:
            merged.append(dict(message))
    return merged


def render(tokenizer: ChatTokenizer, messages: Sequence[Message], generation: bool = True) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation
    )


def count_tokens(tokenizer: ChatTokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


@functools.lru_cache(maxsize=8192)
def _message_cost(tokenizer: ChatTokenizer, role: str, content: str) -> int:
    """Tokens one message adds inside the chat template (cached: history repeats every turn)."""
    stub = {"role": "system", "content": "."}
    with_message = render(tokenizer, [stub, {"role": role, "content": content}], generation=False)
    return count_tokens(tokenizer, with_message) - _stub_cost(tokenizer)


@functools.lru_cache(maxsize=16)
def _stub_cost(tokenizer: ChatTokenizer) -> int:
    return count_tokens(tokenizer, render(tokenizer, [{"role": "system", "content": "."}], False))


@functools.lru_cache(maxsize=256)
def _system_cost(tokenizer: ChatTokenizer, content: str) -> int:
    """Tokens of the system message plus the generation prompt: the fixed part of every prompt."""
    system = {"role": "system", "content": content}
    return count_tokens(tokenizer, render(tokenizer, [system], generation=True))


@functools.lru_cache(maxsize=16)
def _template_is_additive(tokenizer: ChatTokenizer) -> bool:
    """Whether a prompt's length is the sum of its messages' lengths (true of ChatML templates,
    whose messages are fenced by special tokens); if not, every prompt is counted in full."""
    sample = [
        {"role": "system", "content": "You are Tess."},
        {"role": "user", "content": "alice: hi there"},
        {"role": "assistant", "content": "Hello! Nice to meet you."},
        {"role": "user", "content": "bob: and me?\nalice: yes?"},
    ]
    exact = count_tokens(tokenizer, render(tokenizer, sample))
    return exact == _system_cost(tokenizer, sample[0]["content"]) + _cost(tokenizer, sample[1:])


def _cost(tokenizer: ChatTokenizer, messages: Sequence[Message]) -> int:
    return sum(_message_cost(tokenizer, m["role"], m["content"]) for m in messages)


def _fit_user_text(tokenizer: ChatTokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[: max(1, max_tokens - 2)]).rstrip() + ELLIPSIS


def build_prompt(
    character: Character,
    history: Sequence[Turn],
    message: Turn,
    *,
    tokenizer: ChatTokenizer,
    budget: int,
    lore: Sequence[LoreHit] = (),
) -> Prompt:
    """System card, then example dialogues, then the newest history that fits, then the fired
    `lore` entries (`bot.lore_activation`), then `message`.

    The card and examples are the fixed prefix: nothing per-message goes there, so it stays
    byte-identical across messages (shared-prefix batching, prefix caching). Priority when the
    budget is tight: the system message is always kept, then the new message (cut at the end if
    it alone is too long), then lore (its last entries dropped first), then history
    newest-first, then examples.
    """
    system = {"role": "system", "content": system_message(character)}

    def cost(messages: Sequence[Message]) -> int:
        return _cost(tokenizer, messages)

    fixed = _system_cost(tokenizer, system["content"])

    new = turn_message(message, character, tokenizer)
    new_cost = cost([new])
    user_truncated = fixed + new_cost > budget
    if user_truncated:
        overhead = new_cost - count_tokens(tokenizer, new["content"])
        room = max(8, budget - fixed - overhead)
        new = {**new, "content": _fit_user_text(tokenizer, new["content"], room)}
        new_cost = cost([new])
    used = fixed + new_cost

    kept_lore = list(lore)
    while kept_lore and used + cost([lore_message(character, kept_lore)]) > budget:
        kept_lore.pop()
    facts = [lore_message(character, kept_lore)] if kept_lore else []
    used += cost(facts)

    kept_history: list[Message] = []
    for turn in reversed(history):
        turn_msg = turn_message(turn, character, tokenizer)
        turn_cost = cost([turn_msg])
        if used + turn_cost > budget:
            break
        kept_history.insert(0, turn_msg)
        used += turn_cost

    kept_examples: list[list[Message]] = []
    for dialogue in character.examples:
        dialogue_messages = example_messages(dialogue)
        dialogue_cost = cost(dialogue_messages)
        if used + dialogue_cost > budget:
            break
        kept_examples.append(dialogue_messages)
        used += dialogue_cost

    # Per-message costs can be off by a token where messages meet, so check the real total.
    while True:
        examples = [m for dialogue in kept_examples for m in dialogue]
        messages = [system, *examples, *merge_same_role([*kept_history, *facts, new])]
        text = render(tokenizer, messages)
        if _template_is_additive(tokenizer):
            total = fixed + cost(messages[1:])  # exact here, and cached
        else:
            total = count_tokens(tokenizer, text)
        if total <= budget or not (kept_examples or kept_history):
            break
        if kept_examples:
            kept_examples.pop()
        else:
            kept_history.pop(0)

    return Prompt(
        messages=messages,
        text=text,
        token_count=total,
        examples_used=len(kept_examples),
        conversation_start=1 + len(examples),
        history_used=len(kept_history),
        user_truncated=user_truncated,
        lore=tuple(kept_lore),
    )

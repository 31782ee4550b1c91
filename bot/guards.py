"""Rule guards: the machine-checkable part of a card's rules, checked before a reply is posted.

A rule in `character.yaml` may carry a `guard`:

    - rule: Always calls Zeno "Mr. Zenny".
      guard:
        when: ['\\bzeno\\b', 'omni-?king']   # the message or the reply mentions this ...
        must_say: ['zenny']                # ... so the reply must say one of these
        never_say: ['\\b(lord|king|mr\\.?) zeno\\b']  # a reply saying any of these breaks it

`never_say` applies always, or only when `when` matches if `when` is given; `must_say` needs
`when`. A rule may list several guards (e.g. one that always applies and one with `when`).
Patterns are Python regexes, case-insensitive, searched anywhere. Every card also gets the
default guard that the character never calls itself an AI, a language model or an assistant
(`ai_guard: false` in the card turns it off, e.g. for an android character).
A rule's own example answers must pass its guard: the card is refused otherwise, since those
answers are what a guard-breaking reply falls back to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.characters import Character

# The default guard: a character speaking as a machine breaks every card.
AI_RULE = "Never says it is an AI, a language model or an assistant."
AI_PATTERNS = (
    r"\b(i am|i'm|im|i was)\s+(just\s+|only\s+|merely\s+)?(an?\s+|the\s+)?"
    r"(ai|a\.i\.|artificial intelligence|(large\s+)?language model|llm|chat\s?bot|"
    r"(virtual|ai|digital)\s+assistant|assistant|computer program|program|software|machine|"
    r"robot|bot)\b",
    r"\bas an (ai|a\.i\.|artificial intelligence|(large )?language model|assistant)\b",
    r"\b(openai|anthropic|hugging ?face|smollm)\b",
)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A guard regex, case-insensitive; ValueError says why it is not one."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None


@dataclass(frozen=True)
class Violation:
    rule: str  # the rule's text
    reason: str  # what the reply did wrong, for logs and the report
    rule_index: int | None = None  # the rule in the card (None: the default AI guard)
    # "never_say": the reply says something forbidden; "must_say": it lacks what the rule's
    # topic (its `when`) requires, so the rule's example answers are on that topic.
    kind: str = "never_say"


def _search(patterns: tuple[re.Pattern[str], ...], text: str) -> re.Match[str] | None:
    for pattern in patterns:
        found = pattern.search(text)
        if found:
            return found
    return None


_AI = tuple(compile_pattern(p) for p in AI_PATTERNS)


def violations(character: Character, message: str, reply: str) -> list[Violation]:
    """Every guard of the card that `reply` (answering `message`) breaks; [] when it is fine."""
    broken = []
    if character.ai_guard and (found := _search(_AI, reply)):
        broken.append(Violation(AI_RULE, f"says {found.group(0)!r}"))
    for index, rule in enumerate(character.rules):
        for guard in rule.guard:
            when, never, must = guard.compiled()
            triggered = not when or _search(when, message) or _search(when, reply)
            if not triggered:
                continue
            if never and (found := _search(never, reply)):
                broken.append(Violation(rule.rule, f"says {found.group(0)!r}", index))
                break
            if must and not _search(must, reply):
                said = ", ".join(guard.must_say)
                reason = f"does not say any of: {said}"
                broken.append(Violation(rule.rule, reason, index, kind="must_say"))
                break
    return broken


def breaks_never_guard(character: Character, message: str, text: str) -> bool:
    """Whether partial text already says something a guard forbids (used while streaming:
    `must_say` cannot be judged before the reply is complete)."""
    return any(v.kind == "never_say" for v in violations(character, message, text))

"""Preference pairs without users (`python -m finetune preferences synth ID`).

Rule pairs: each rule that has a guard is asked its own example questions and training-only
example questions (`training_examples` in the card: not in the prompt), and every card's default
guard, that the character never calls itself an AI, a few identity challenges and the card's
own ones; once with no history and after a few windows of the character's training dialogue;
and the messages of the character's training lines that are on a rule's topic (they trigger its
guard's `when`), with no history and in their own conversation, so a rule is taught on more
than one phrasing. The base model and the character's adapter each sample answers; those that
break the rule's guard are rejected, against the rule's own example answers (or the real line
that answered the message; samples that break no guard only when there is neither). An
identity challenge is answered well only by a reply that stays the character, one that says
the character's name: the card's own answers to such questions.
Only the card and the training lines are read: never the held-out rule probes, which the
report asks.

Mend pairs: each answer of the character's own model (its adapter, greedy and sampled) that
breaks a rule is mended by the rule's `mends` (card: replace the words that break it, or lead with
words that keep it) and the mended answer chosen over it. Unlike the example answers, the chosen
reply is the model's own but for the mended words, so training moves those words and little else.

Contrast pairs: for a context from the character's training lines, the character's real line is
chosen over what another character's adapter (or the base model, in a cast of one) answers with
this character's card: they teach the adapter its speaker, not only the script's style.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.characters import Character, Exchange, Mend, Rule
from bot.engine import InferenceEngine, SamplingSettings
from bot.guards import AI_RULE, violations
from bot.history import Turn
from bot.prompt import build_prompt
from bot.responder import clean_character_reply
from bot.training_data import TrainingRecord
from finetune.batch_generate import Job, generate_all
from finetune.preference_data import PreferencePair

# The default guard's own example questions (it has no rule in the card to take them from).
IDENTITY_QUESTIONS = (
    "Are you a real person or a bot?",
    "Be honest with me: are you an AI?",
    "What are you, really? Some kind of program?",
)
# A card example whose question challenges who the character is: its answer is a good answer to
# the identity challenges too (e.g. "Are you an AI?" -> "A what? I'm Goku!").
IDENTITY_CHALLENGE = re.compile(
    r"\b(an? (ai|bot|robot|program|chatbot|machine|assistant)|real person|language model)\b",
    re.IGNORECASE,
)


def identity_exchanges(character: Character) -> list[Exchange]:
    """The card's exchanges (rules' examples and training examples, example dialogues) that
    answer an identity challenge and stay the character (the answer says its name)."""
    exchanges = [e for rule in character.rules for e in rule.exchanges]
    exchanges += [e for dialogue in character.examples for e in dialogue]
    return [
        e
        for e in exchanges
        if IDENTITY_CHALLENGE.search(e.user) and says_own_name(character, e.character)
    ]


def identity_rules(character: Character) -> list[Rule]:
    """The card's identity rules: those whose exchanges answer an identity challenge as the
    character. The default AI guard asks their questions and takes their mends."""
    identity = identity_exchanges(character)
    return [rule for rule in character.rules if any(e in identity for e in rule.exchanges)]


def identity_answers(character: Character) -> tuple[str, ...]:
    """The card's own answers to identity challenges that stay the character."""
    return tuple(dict.fromkeys(e.character for e in identity_exchanges(character)))


@dataclass(frozen=True)
class SynthOptions:
    contexts: int = 4  # each question: no history, then after contexts-1 training windows
    samples: int = 4  # answers sampled per prompt by the base model and by the adapter, each
    contrast: int = 48  # contrast pairs wanted (0: none)
    topic_messages: int = 8  # per rule: training messages on its topic asked too (0: none)
    chosen_uses: int = 4  # most pairs one good answer is the chosen reply of (0: no limit)
    temperature: float = 0.7  # the bot's: rejected answers are the failures users would see
    top_p: float = 0.95
    max_new_tokens: int = 48
    batch_size: int = 8
    seed: int = 0


@dataclass(frozen=True)
class RulePrompt:
    rule_index: int | None  # None: the default AI guard
    rule: str
    message: str
    prompt: str
    authors: tuple[str, ...]  # speakers of the prompt's history and message
    examples: tuple[str, ...]  # the rule's own example answers to this message


@dataclass
class SynthResult:
    pairs: list[PreferencePair] = field(default_factory=list)
    samples: Counter[str] = field(default_factory=Counter)  # "broke" / "passed" / "other"
    # The own model's answers that broke their rule: "mended" / "not mended"
    mends: Counter[str] = field(default_factory=Counter)
    skipped_rules: list[str] = field(default_factory=list)  # rules no pair can come from, why

    def facts(self) -> dict[str, object]:
        return {
            "samples that broke the rule's guard": self.samples["broke"],
            "samples that broke no guard": self.samples["passed"],
            "samples that broke only another rule (unused)": self.samples["other"],
            "own answers that broke their rule, mended": self.mends["mended"],
            "own answers that broke their rule, no mend fixed": self.mends["not mended"],
            "rules without pairs": "; ".join(self.skipped_rules) or "none",
        }


def histories(
    character: Character, records: Sequence[TrainingRecord], count: int, seed: int
) -> list[list[Turn]]:
    """No history, then `count - 1` windows of the character's training dialogue (each ending
    with the character's real reply), chosen with `seed`."""
    windows: list[list[Turn]] = [[]]
    usable = [r for r in records if r.message is not None]
    for record in random.Random(seed).sample(usable, min(count - 1, len(usable))):
        reply = Turn("character", character.name, record.reply, character.id)
        windows.append([*record.context, reply])
    return windows


def on_topic(character: Character, rule_index: int, message: str) -> bool:
    """Whether `message` is on the rule's topic: it triggers one of its guards' `when`."""
    for guard in character.rules[rule_index].guard:
        when, _, _ = guard.compiled()
        if any(pattern.search(message) for pattern in when):
            return True
    return False


def topic_records(
    character: Character, records: Sequence[TrainingRecord], rule_index: int, limit: int
) -> list[TrainingRecord]:
    """Up to `limit` training lines whose message is on the rule's topic and whose real reply
    breaks no guard (it is then a good answer), in file order."""
    found = []
    for record in records:
        message = record.message
        if message is None or not on_topic(character, rule_index, message.content):
            continue
        if not violations(character, message.content, record.reply):
            found.append(record)
    return found[:limit]


def same_question_answers(
    rule_index: int | None, rule: str, exchanges: Sequence[Exchange]
) -> list[tuple[int | None, str, str, tuple[str, ...]]]:
    """Each distinct question of `exchanges` once, with every answer the card gives to it."""
    answers: dict[str, list[str]] = {}
    for exchange in exchanges:
        answers.setdefault(exchange.user, []).append(exchange.character)
    return [(rule_index, rule, q, tuple(dict.fromkeys(a))) for q, a in answers.items()]


def rule_prompts(
    character: Character,
    windows: Sequence[Sequence[Turn]],
    *,
    tokenizer: object,
    budget: int,
    records: Sequence[TrainingRecord] = (),
    topic_messages: int = 0,
) -> tuple[list[RulePrompt], list[str]]:
    """Every (rule question, history) prompt, and the rules that give none, with why. The
    rule's example questions are asked after each of `windows`; up to `topic_messages` on-topic
    training messages per rule with no history and in their own conversation."""
    questions: list[tuple[int | None, str, str, tuple[str, ...]]] = []
    # Training messages on a rule's topic: (rule, message, real reply, its conversation)
    on_topic_lines: list[tuple[int, str, str, tuple[str, ...], Sequence[Turn]]] = []
    skipped = []
    asked_as_identity = identity_rules(character) if character.ai_guard else []
    if character.ai_guard:
        answers = identity_answers(character)
        questions += [(None, AI_RULE, q, answers) for q in IDENTITY_QUESTIONS]
        questions += same_question_answers(None, AI_RULE, identity_exchanges(character))
    for index, rule in enumerate(character.rules):
        if not rule.guard:
            # An identity rule's questions are asked above, under the default AI guard.
            if rule not in asked_as_identity:
                skipped.append(f"rules[{index}] has no guard to judge answers by")
            continue
        if not rule.exchanges:
            skipped.append(f"rules[{index}] has no example question to ask")
            continue
        questions += same_question_answers(index, rule.rule, rule.exchanges)
        for record in topic_records(character, records, index, topic_messages):
            message = record.message
            assert message is not None
            for window in ((), record.context[:-1]):
                on_topic_lines.append((index, rule.rule, message, (record.reply,), window))
    asked = [
        (rule_index, rule, Turn("user", "User", question, character.id), answers, window)
        for rule_index, rule, question, answers in questions
        for window in windows
    ] + on_topic_lines
    prompts = []
    for rule_index, rule, message, answers, window in asked:
        prompt = build_prompt(character, window, message, tokenizer=tokenizer, budget=budget)
        authors = tuple(sorted({message.author, *(t.author for t in window)}))
        prompts.append(RulePrompt(rule_index, rule, message.content, prompt.text, authors, answers))
    return prompts, skipped


def says_own_name(character: Character, answer: str) -> bool:
    """Whether the answer names the character (a word of 4 letters or more of its name or
    aliases: "Goku", "Kakarot", not "Son")."""
    words = {w for name in character.names for w in re.findall(r"[\w'-]{4,}", name)}
    return any(re.search(rf"\b{re.escape(w)}\b", answer, re.IGNORECASE) for w in words)


def judge(character: Character, rule_prompt: RulePrompt, answer: str) -> str:
    """ "broke": the answer breaks this prompt's rule; "passed": it breaks no guard at all;
    "other": it breaks only another rule (neither a good nor a bad example of this one). An
    identity challenge (the default AI guard's question) is broken too by an answer that does not
    say who the character is: "I'm just a guy" dodges where "I'm Goku!" stays in character."""
    broken = violations(character, rule_prompt.message, answer)
    if any(v.rule_index == rule_prompt.rule_index and v.rule == rule_prompt.rule for v in broken):
        return "broke"
    if rule_prompt.rule_index is None and not says_own_name(character, answer):
        return "broke"
    return "other" if broken else "passed"


def rule_pairs(
    character: Character,
    rule_prompt: RulePrompt,
    answers: Sequence[str],
    limit: int,
    uses: Counter[str] | None = None,
    max_uses: int = 0,
) -> tuple[list[PreferencePair], Counter[str]]:
    """Pairs for one prompt: each distinct breaking answer against a good one, at most `limit`.
    Good answers are the prompt's examples (the rule's own, or the real line that answered the
    message); samples that break no guard only when there is none: a sample can keep the guard
    and still be a poor answer ("Super Saiyan 4?! Oh yeah!" has the question mark the guard
    asks for). Each breaking answer gets the good one used least so far. `uses` counts them
    over every prompt of a set; with `max_uses` none is the chosen reply of more pairs than
    that: one example answer chosen in dozens of pairs is recited word for word, not learned
    as a rule."""
    uses = Counter() if uses is None else uses
    verdicts = Counter()
    bad, passing = [], []
    for answer in dict.fromkeys(a for a in answers if a.strip()):
        verdict = judge(character, rule_prompt, answer)
        verdicts[verdict] += 1
        if verdict == "broke":
            bad.append(answer)
        elif verdict == "passed":
            passing.append(answer)
    good = list(dict.fromkeys(rule_prompt.examples)) or passing
    pairs = []
    for rejected in bad[:limit]:
        free = [g for g in good if not max_uses or uses[g] < max_uses]
        if not free:
            break
        chosen = min(free, key=lambda g: uses[g])  # the first of equals
        uses[chosen] += 1
        pairs.append(
            PreferencePair(
                character.id, "rule", rule_prompt.prompt, chosen, rejected, rule_prompt.rule
            )
        )
    return pairs, verdicts


def rule_mends(character: Character, rule_index: int | None) -> list[Mend]:
    """The mends for a prompt's rule. The default AI guard has no rule in the card: its
    identity challenges take the mends of the rules whose exchanges answer one as the character
    (the card's own identity rule)."""
    if rule_index is not None:
        return list(character.rules[rule_index].mends)
    return [mend for rule in identity_rules(character) for mend in rule.mends]


def mended(character: Character, rule_prompt: RulePrompt, answer: str) -> str | None:
    """`answer` mended by its rule's mends, each tried in order while the answer still breaks
    the rule; None when they leave it breaking any guard (or have nothing to mend)."""
    text = answer
    for mend in rule_mends(character, rule_prompt.rule_index):
        if judge(character, rule_prompt, text) != "broke":
            break
        text = mend.apply(text)
    if text == answer or judge(character, rule_prompt, text) != "passed":
        return None
    return text


def mend_pairs(
    character: Character, rule_prompt: RulePrompt, answers: Sequence[str]
) -> tuple[list[PreferencePair], Counter[str]]:
    """For each distinct answer that breaks the prompt's rule: the mended answer chosen over it."""
    pairs, counts = [], Counter()
    for answer in dict.fromkeys(a for a in answers if a.strip()):
        if judge(character, rule_prompt, answer) != "broke":
            continue
        text = mended(character, rule_prompt, answer)
        counts["not mended" if text is None else "mended"] += 1
        if text is not None:
            pairs.append(
                PreferencePair(
                    character.id, "mend", rule_prompt.prompt, text, answer, rule_prompt.rule
                )
            )
    return pairs, counts


def sampling(options: SynthOptions, temperature: float | None = None) -> SamplingSettings:
    return SamplingSettings(
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature if temperature is None else temperature,
        top_p=options.top_p,
        repetition_penalty=1.1,
    )


def synthesize(
    engine: InferenceEngine,
    character: Character,
    cast: Sequence[Character],
    records: Sequence[TrainingRecord],
    options: SynthOptions,
    *,
    budget: int,
) -> SynthResult:
    """Rule and contrast pairs for `character` (its adapter and the cast's loaded in `engine`)."""
    result = SynthResult()
    windows = histories(character, records, options.contexts, options.seed)
    prompts, result.skipped_rules = rule_prompts(
        character,
        windows,
        tokenizer=engine.tokenizer,
        budget=budget,
        records=records,
        topic_messages=options.topic_messages,
    )
    own = character.id if character.id in engine.adapters else None
    models = [None] if own is None else [None, own]
    jobs = [
        Job(p.prompt, model, character.id)
        for p in prompts
        for model in models
        for _ in range(options.samples)
    ]
    answers = generate_all(
        engine,
        jobs,
        sampling(options),
        batch_size=options.batch_size,
        seed=options.seed,
        desc=f"rule samples {character.id}",
    )
    # The own model's greedy answer too, for mend pairs: what it says most often is what to mend.
    mending = any(rule_mends(character, p.rule_index) for p in prompts)
    greedy = []
    if mending:
        greedy = generate_all(
            engine,
            [Job(p.prompt, own, character.id) for p in prompts],
            sampling(options, temperature=0.0),
            batch_size=options.batch_size,
            seed=options.seed,
            desc=f"greedy answers {character.id}",
        )
    per_prompt = len(models) * options.samples
    uses: Counter[str] = Counter()
    for n, rule_prompt in enumerate(prompts):
        texts = [
            clean_character_reply(
                character,
                answer.text,
                cast=cast,
                authors=rule_prompt.authors,
                hit_token_limit=answer.hit_token_limit,
            )
            for answer in [
                *answers[n * per_prompt : (n + 1) * per_prompt],
                *greedy[n : n + 1],
            ]
        ]
        sampled, own_answers = texts[:per_prompt], texts[per_prompt - options.samples :]
        pairs, verdicts = rule_pairs(
            character, rule_prompt, sampled, options.samples, uses, options.chosen_uses
        )
        result.pairs += pairs
        result.samples += verdicts
        if mending:
            pairs, counts = mend_pairs(character, rule_prompt, own_answers)
            result.pairs += pairs
            result.mends += counts
    if options.contrast:
        result.pairs += contrast_pairs(engine, character, cast, records, options, budget=budget)
    return result


def contrast_pairs(
    engine: InferenceEngine,
    character: Character,
    cast: Sequence[Character],
    records: Sequence[TrainingRecord],
    options: SynthOptions,
    *,
    budget: int,
) -> list[PreferencePair]:
    """The character's real line against another adapter's greedy answer to the same context
    (the others in turn; the base model when no other character has an adapter)."""
    others = [c.id for c in cast if c.id != character.id and c.id in engine.adapters] or [None]
    usable = [r for r in records if r.message is not None]
    chosen = random.Random(options.seed + 1).sample(usable, min(options.contrast, len(usable)))
    prompts, jobs = [], []
    for n, record in enumerate(chosen):
        message = record.message
        assert message is not None
        prompt = build_prompt(
            character,
            record.context[:-1],
            message,
            tokenizer=engine.tokenizer,
            budget=budget,
        )
        prompts.append((record, prompt.text, others[n % len(others)]))
        jobs.append(Job(prompt.text, others[n % len(others)], character.id))
    results = generate_all(
        engine,
        jobs,
        sampling(options, temperature=0.0),
        batch_size=options.batch_size,
        seed=options.seed,
        desc=f"contrast {character.id}",
    )
    pairs = []
    for (record, prompt, other), result in zip(prompts, results, strict=True):
        authors = [t.author for t in record.context]
        text = clean_character_reply(
            character,
            result.text,
            cast=cast,
            authors=authors,
            hit_token_limit=result.hit_token_limit,
        )
        if text.strip() and text.strip() != record.reply.strip():
            detail = f"{other or 'base'} answered"
            pairs.append(
                PreferencePair(character.id, "contrast", prompt, record.reply, text, detail)
            )
    return pairs

"""Writing one reply: sample it (several candidates, persona guidance), clean it, check it
against the card's rule guards, and pick the candidate most like the character.

Knows nothing of Discord or of memory: the chat service builds the prompt from the channel's
history and remembers what was posted; the evaluation calls this with held-out conversations.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bot.characters import Character
from bot.config import GenerationConfig
from bot.generation import (
    GenerationBackend,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    ScoreRequest,
    TextCallback,
)
from bot.guards import Violation, breaks_never_guard, violations
from bot.history import Turn
from bot.persona_score import persona_score
from bot.postprocess import clean_reply
from bot.prompt import Prompt, render

log = logging.getLogger(__name__)

GUARD_ATTEMPTS = 2  # the reply, and one resample when it breaks a guard; then the fallback
RESAMPLE_TEMPERATURE = 0.9


@dataclass(frozen=True)
class Candidate:
    """One sampled reply, cleaned, with the guards it breaks and (when several were sampled
    and it passed) its persona score."""

    text: str
    result: GenerationResult
    broken: tuple[Violation, ...] = ()
    score: float | None = None


@dataclass(frozen=True)
class Reply:
    """A generated answer, not yet remembered: the caller posts it, then `ChatService.remember`s
    what was actually shown."""

    character: Character
    text: str
    prompt: Prompt
    result: GenerationResult
    message: Turn  # the user's turn it answers, as stored (template tokens neutralized)
    # Guards the model's replies broke, in order (empty: the first reply passed), and what was
    # done: "" (nothing to do), "resampled" (the second sample passed) or "fallback".
    broken: tuple[Violation, ...] = ()
    guard_action: str = ""
    # Every sample of the last attempt, with its violations and persona score (more than one
    # when generation.candidates > 1); the reply is one of them unless guard_action is fallback.
    candidates: tuple[Candidate, ...] = ()

    def answer_turn(self, text: str | None = None) -> Turn:
        return Turn(
            role="character",
            author=self.character.name,
            content=self.text if text is None else text,
            character_id=self.character.id,
        )


@dataclass(frozen=True)
class Sample:
    """What sampling a prompt gave: the text to post and how it was chosen (see Reply)."""

    text: str
    result: GenerationResult
    broken: tuple[Violation, ...] = ()
    guard_action: str = ""
    candidates: tuple[Candidate, ...] = ()


def clean_character_reply(
    character: Character,
    text: str,
    *,
    cast: Iterable[Character],
    authors: Iterable[str],
    hit_token_limit: bool = False,
    fallback: str = "",
) -> str:
    """`clean_reply` for `character`: the other characters of `cast` and the `authors` are the
    speakers whose turns the model must not write."""
    others = {c.name for c in cast if c.id != character.id} | set(authors)
    return clean_reply(
        text,
        speaker_names=character.names,
        other_speakers=sorted(others - set(character.names)),
        hit_token_limit=hit_token_limit,
        fallback=fallback,
    )


def guarded_fallback(
    character: Character, message: str, broken: list[Violation], *, seed: int = 0
) -> str:
    """What a character says when every sample broke a guard: the broken rule's example (or
    training example) answer whose question is closest to the message, else one of the card's
    fallback lines."""
    words = _content_words(message)
    best: tuple[int, bool, str] | None = None  # (shared words, on topic, answer)
    for violation in broken:
        if violation.rule_index is None:
            continue
        # A must_say rule applies only on its topic (its `when` matched): its examples are on
        # that topic even when they share no word with the message.
        on_topic = violation.kind == "must_say"
        for example in character.rules[violation.rule_index].exchanges:
            shared = len(words & _content_words(example.user))
            if best is None or (shared, on_topic) > best[:2]:
                best = (shared, on_topic, example.character)
    # An example about something else would answer the wrong question: a fallback line is
    # vaguer, but never off topic.
    if best is not None and (best[0] > 0 or best[1]):
        return best[2]
    return character.fallback(seed)


def _content_words(text: str) -> set[str]:
    """Words of four letters or more: enough to tell what a question is about."""
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if len(w) >= 4}


def bare_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """The prompt's conversation without the card: no system message, no example dialogues
    (the other side of persona guidance and of the persona score)."""
    return render(tokenizer, prompt.messages[prompt.conversation_start :])


class Responder:
    """Turns a prompt into the reply a character posts: samples `generation.candidates`
    replies as rows of one batch (with persona guidance when set), cleans them, drops those
    that break a guard and picks the highest persona score; when all break a guard it samples
    once more, then falls back to the rule's example answer or a fallback line."""

    def __init__(
        self,
        *,
        generation: GenerationConfig,
        cast: Iterable[Character],
        backend: GenerationBackend,
        guards: bool = True,
    ) -> None:
        self.cast = cast  # every character: the speakers a reply must not write for
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.candidates = generation.candidates
        self.guards = guards
        self.settings = SamplingSettings.from_config(generation)

    @property
    def streams(self) -> bool:
        """Whether replies can be shown while generated (one candidate: it is the reply)."""
        return self.candidates == 1

    @property
    def uses_levers(self) -> bool:
        """Whether replies need the bare prompt (persona guidance, or several candidates to
        score): who stores a prompt to answer it again stores that too."""
        return self.settings.persona_guidance != 1.0 or self.candidates > 1

    async def respond(
        self,
        character: Character,
        prompt: Prompt,
        message: Turn,
        history: Sequence[Turn],
        on_text: TextCallback | None = None,
    ) -> Reply:
        """`character`'s reply to `message` (already in `prompt`); `on_text` gets the raw text so
        far while it is generated, when only one candidate is sampled (it may start over)."""
        bare = bare_prompt(prompt, self.tokenizer) if self.uses_levers else None
        sample = await self._sample(
            character,
            prompt.text,
            message,
            authors=[message.author, *(t.author for t in history)],
            said=[t.content for t in history if t.role == "character"],
            bare=bare,
            fallback_seed=len(history),
            settings=self.settings,
            on_text=on_text,
        )
        return Reply(
            character,
            sample.text,
            prompt,
            sample.result,
            message,
            sample.broken,
            sample.guard_action,
            sample.candidates,
        )

    async def answer_again(
        self,
        character: Character,
        prompt_text: str,
        message: Turn,
        *,
        authors: Sequence[str],
        said: Sequence[str],
        bare: str | None,
        fallback_seed: int,
        seed: int,
    ) -> Sample:
        """Another answer to a prompt answered before ("another answer" in Discord): sampled at
        `generation.temperature` but at least RESAMPLE_TEMPERATURE, seeded with `seed` (fresh
        for every call, so that it differs even when the config fixes the seed), with the same
        candidates, guards and fallback as `respond`. `authors`, `said` and `fallback_seed`
        stand for the history the prompt was built from (its speakers, the character's own
        lines, its length); `bare` is the prompt without the card (needed when `uses_levers`)."""
        if self.uses_levers and bare is None:
            raise ValueError(
                "this responder uses persona guidance or several candidates, which need the "
                "bare prompt (the conversation without the card); none was given"
            )
        settings = replace(
            self.settings,
            temperature=max(self.settings.temperature, RESAMPLE_TEMPERATURE),
            seed=seed,
        )
        return await self._sample(
            character,
            prompt_text,
            message,
            authors=list(authors),
            said=list(said),
            bare=bare,
            fallback_seed=fallback_seed,
            settings=settings,
            on_text=None,
        )

    async def _sample(
        self,
        character: Character,
        prompt_text: str,
        message: Turn,
        *,
        authors: list[str],
        said: list[str],
        bare: str | None,
        fallback_seed: int,
        settings: SamplingSettings,
        on_text: TextCallback | None,
    ) -> Sample:
        """Sample, clean, check the guards, score; resample once, then fall back (see the class)."""
        broken: list[Violation] = []
        candidates: list[Candidate] = []
        for attempt in range(GUARD_ATTEMPTS):
            stream = on_text if attempt == 0 and self.streams else None
            request = GenerationRequest(
                prompt_text, settings, character.id, stream, bare_prompt=bare
            )
            # One request per candidate, sent together: the batcher runs them as rows of one
            # batch, and the engine runs the prompt they share once.
            results = await asyncio.gather(
                *(self.backend.generate(request) for _ in range(self.candidates))
            )
            candidates = [
                self._candidate(character, message, result, authors, fallback_seed)
                for result in results
            ]
            passing = [i for i, c in enumerate(candidates) if not c.broken]
            if passing:
                if len(passing) > 1:
                    chosen_ones = [candidates[i] for i in passing]
                    scored = await self._score(
                        character, prompt_text, bare, message, said, chosen_ones
                    )
                    for i, candidate in zip(passing, scored, strict=True):
                        candidates[i] = candidate
                # The first of the best: with one candidate, it is the reply.
                chosen = max((candidates[i] for i in passing), key=lambda c: c.score or 0.0)
                return Sample(
                    chosen.text,
                    chosen.result,
                    tuple(broken),
                    "resampled" if broken else "",
                    tuple(candidates),
                )
            broken += [v for c in candidates for v in c.broken]
            # Greedy decoding would say the same again: the second try samples (and a seeded
            # request, with the same seed, would too: it moves on to the next seed).
            settings = replace(
                settings,
                temperature=max(settings.temperature, RESAMPLE_TEMPERATURE),
                seed=None if settings.seed is None else settings.seed + 1,
            )
        text = guarded_fallback(character, message.content, broken, seed=fallback_seed)
        reasons = "; ".join(sorted({v.reason for v in broken}))
        log.info(
            "%s: %d samples broke a guard (%s); answered %r",
            character.id,
            len(broken),
            reasons,
            text,
        )
        last = candidates[0].result
        return Sample(text, last, tuple(broken), "fallback", tuple(candidates))

    def _candidate(
        self,
        character: Character,
        message: Turn,
        result: GenerationResult,
        authors: list[str],
        seed: int,
    ) -> Candidate:
        text = self.clean(
            character,
            result.text,
            authors=authors,
            hit_token_limit=result.hit_token_limit,
            fallback=character.fallback(seed),
        )
        found = violations(character, message.content, text) if self.guards else []
        return Candidate(text, result, tuple(found))

    async def _scored(
        self,
        character: Character,
        prompt: Prompt,
        bare: str,
        message: Turn,
        history: Sequence[Turn],
        candidates: list[Candidate],
    ) -> list[Candidate]:
        """The candidates with their persona scores, from one batched scoring pass."""
        said = [t.content for t in history if t.role == "character"]
        return await self._score(character, prompt.text, bare, message, said, candidates)

    async def _score(
        self,
        character: Character,
        prompt_text: str,
        bare: str,
        message: Turn,
        said: list[str],
        candidates: list[Candidate],
    ) -> list[Candidate]:
        rows = []
        for candidate in candidates:
            rows += [
                ScoreRequest(prompt_text, candidate.text, character.id),
                ScoreRequest(bare, candidate.text, None),
            ]
        scores = await self.backend.score(rows)
        scored = []
        for i, candidate in enumerate(candidates):
            own, base = scores[2 * i], scores[2 * i + 1]
            llr = (own.logprob - base.logprob) / max(own.tokens, 1)
            score = persona_score(llr, candidate.text, message.content, said)
            scored.append(replace(candidate, score=score))
        return scored

    def preview(self, character: Character, raw: str, *, message: str, authors: list[str]) -> str:
        """Streamed text as it may be shown: cleaned, and nothing while it already says what a
        guard forbids (the final reply replaces it)."""
        text = self.clean(character, raw, authors=authors)
        if self.guards and breaks_never_guard(character, message, text):
            return ""
        return text

    def clean(
        self,
        character: Character,
        text: str,
        *,
        authors: list[str],
        hit_token_limit: bool = False,
        fallback: str = "",
    ) -> str:
        """Post-process model output; `authors` are the people whose turns it must not write."""
        return clean_character_reply(
            character,
            text,
            cast=self.cast,
            authors=authors,
            hit_token_limit=hit_token_limit,
            fallback=fallback,
        )

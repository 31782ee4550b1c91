"""A generation request and its result: what the chat service hands any backend (no torch here,
so a bot process whose model runs elsewhere never imports it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.config import GenerationConfig


@dataclass(frozen=True)
class SamplingSettings:
    """Settings shared by a batch; requests with different settings go in different batches."""

    max_new_tokens: int
    temperature: float  # 0 = greedy
    top_p: float
    repetition_penalty: float
    persona_guidance: float = 1.0  # 1.0 = off; otherwise every request needs its bare_prompt
    # Seeds the sampling of this batch (None: the engine's own `generation.seed`, or none): an
    # "another answer" sample gets a fresh one, so that it differs even when the config fixes
    # the seed. Requests with different seeds never share a batch.
    seed: int | None = None

    @classmethod
    def from_config(cls, config: GenerationConfig, **overrides: Any) -> SamplingSettings:
        values = config.model_dump(exclude={"seed", "candidates"}) | overrides
        return cls(**values)


# Called (from any thread) with a reply's text so far, each time it grows; the text may also
# start over, when a backend retries a job elsewhere.
TextCallback = Callable[[str], None]


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str  # rendered with the chat template, generation prompt included
    settings: SamplingSettings
    adapter: str | None = None  # character id, or None for the bare base model
    on_text: TextCallback | None = None
    # The same conversation without the card, for persona guidance (run without any adapter).
    bare_prompt: str | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """How likely `continuation` is right after `prompt` under `adapter` (None: the base)."""

    prompt: str
    continuation: str
    adapter: str | None = None


@dataclass(frozen=True)
class TextScore:
    logprob: float  # summed over the continuation's tokens
    tokens: int

    @property
    def mean(self) -> float:
        return self.logprob / max(self.tokens, 1)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    new_tokens: int
    hit_token_limit: bool  # stopped at max_new_tokens, so the text may end mid-sentence

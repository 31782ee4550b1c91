"""What every generation backend offers the chat service, /status and /reload-adapter.

A backend turns a rendered prompt into text for one character (its LoRA adapter, or the base
model). The prompt is always built in the bot process (card, history, budget, chat template),
so every backend needs the model's tokenizer there, never its weights unless it runs the model.

Streaming: `GenerationRequest.on_text` is called with the text so far (not a piece), from any
thread. The text can start over (a worker died mid-reply and another took the job): the caller
then shows the new text in place of the old.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.generation.request import GenerationRequest, GenerationResult, ScoreRequest, TextScore


class BackendUnavailable(Exception):
    """Generation cannot happen now (no worker, server down, timed out); the message is meant
    for the user: it says what is wrong, in words a server member understands."""


def scoring_unavailable(mode: str) -> NotImplementedError:
    """What a backend without the model in this process raises from `score`."""
    return NotImplementedError(
        f"persona scoring (generation.candidates > 1) runs in embedded mode only, not {mode}: "
        "it needs the model's log-likelihoods under the card and the bare base in one pass"
    )


@dataclass(frozen=True)
class ReloadOutcome:
    """One place that serves the model (this process, a worker, a server) after a reload."""

    where: str
    ok: bool
    detail: str  # the adapter loaded, or why it was refused (the old one keeps serving)


@dataclass(frozen=True)
class WorkerInfo:
    """A model worker as its last heartbeat described it."""

    name: str
    device: str
    model: str
    adapters: dict[str, str]  # character id -> adapter version (hash of its weights)
    batches: int
    queue: int
    age: float  # seconds since the heartbeat


@dataclass(frozen=True)
class BackendStatus:
    mode: str
    model: str
    device: str
    quantization: str
    adapters: list[str]  # characters with an adapter being served
    adapter_failures: dict[str, str]  # character id -> why its adapter was refused
    queue_depth: int
    batches_run: int
    workers: list[WorkerInfo] = field(default_factory=list)
    oldest_pending_age: float | None = None  # seconds the oldest queued job has waited
    problem: str | None = None  # why generation would fail now, if it would


class GenerationBackend(Protocol):
    mode: str
    tokenizer: Any

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The reply to one request; BackendUnavailable when it cannot be had now."""
        ...

    async def score(self, requests: list[ScoreRequest]) -> list[TextScore]:
        """Each continuation's log-likelihood after its prompt, in one batched pass (the persona
        score of candidates). Only backends that run the model here have it: the config refuses
        `generation.candidates > 1` elsewhere."""
        ...

    async def reload_adapter(self, character_id: str) -> list[ReloadOutcome]:
        """Load the character's adapter anew everywhere it is served; one outcome per place."""
        ...

    async def status(self) -> BackendStatus: ...

    async def close(self) -> None: ...

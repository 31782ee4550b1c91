"""Many prompts answered in batches that the engine runs fast: one adapter and one card each."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from tqdm import tqdm

from bot.engine import InferenceEngine
from bot.generation.request import GenerationRequest, GenerationResult, SamplingSettings


@dataclass(frozen=True)
class Job:
    prompt: str
    adapter: str | None
    group: str = ""  # prompts of one group start alike (one character's card): batched together


def generate_all(
    engine: InferenceEngine,
    jobs: list[Job],
    settings: SamplingSettings,
    *,
    batch_size: int,
    seed: int | None,
    desc: str = "generate",
) -> list[GenerationResult]:
    """Answers to the jobs, in job order. A batch holds one group under one adapter, so
    the engine runs the card the group's prompts share once for the whole batch."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[(job.adapter or "", job.group)].append(i)
    batches = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda i: jobs[i].prompt)
        batches += [members[j : j + batch_size] for j in range(0, len(members), batch_size)]
    results: list[GenerationResult | None] = [None] * len(jobs)
    for chunk in tqdm(batches, desc=desc, leave=False):
        requests = [
            GenerationRequest(jobs[i].prompt, settings, adapter=jobs[i].adapter) for i in chunk
        ]
        for i, result in zip(chunk, engine.generate(requests, seed=seed), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]

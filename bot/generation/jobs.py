"""The job protocol between the bot and `python -m bot worker` processes, over Redis.

Keys (all under the bot's `redis.key_prefix`):
- `<p>:jobs`: a stream of jobs, read by the consumer group `workers` (XREADGROUP), so each job
  goes to one worker; a worker deletes a job's entry once it has written the final answer
  (XACK + XDEL), so the stream holds only waiting and running jobs and its first entry's id
  is the enqueue time of the oldest.
- `<p>:reply:<job id>`: the job's answer, a short expiring stream: entries of
  `{attempt, text}` with the text so far, then one with `done` (or `error`). An attempt is one
  worker's run of the job: when a worker dies and another reclaims the job (XAUTOCLAIM), the
  new attempt's text replaces the old one's on the bot side.
- `<p>:workers`: a hash, worker name -> its heartbeat (JSON).
- `<p>:control`: pub/sub channel of admin requests (reload an adapter); each worker answers on
  the list `<p>:control:<request id>`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.generation.request import (
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    TextCallback,
)

GROUP = "workers"
READ_BLOCK_MS = 500  # blocking reads stay under the Redis client's 1 s command timeout


@dataclass(frozen=True)
class JobKeys:
    prefix: str

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def reply(self, job_id: str) -> str:
        return f"{self.prefix}:reply:{job_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    def control_reply(self, request_id: str) -> str:
        return f"{self.prefix}:control:{request_id}"


@dataclass(frozen=True)
class Job:
    """One generation request as it travels to a worker (the callback stays behind)."""

    id: str
    prompt: str
    settings: SamplingSettings
    adapter: str | None
    expires_at: float  # time.time() after which no worker may start it (the user was told)
    bare_prompt: str | None = None  # for persona guidance

    @classmethod
    def for_request(cls, request: GenerationRequest, timeout: float) -> Job:
        return cls(
            uuid.uuid4().hex,
            request.prompt,
            request.settings,
            request.adapter,
            time.time() + timeout,
            request.bare_prompt,
        )

    def request(self, on_text: TextCallback | None = None) -> GenerationRequest:
        return GenerationRequest(
            self.prompt, self.settings, self.adapter, on_text, bare_prompt=self.bare_prompt
        )

    def fields(self) -> dict[str, str]:
        return {"job": json.dumps(asdict(self), ensure_ascii=False)}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Job:
        data = json.loads(fields["job"])
        return cls(
            id=data["id"],
            prompt=data["prompt"],
            settings=SamplingSettings(**data["settings"]),
            adapter=data["adapter"],
            expires_at=float(data["expires_at"]),
            bare_prompt=data.get("bare_prompt"),
        )


@dataclass(frozen=True)
class Chunk:
    """One entry of a job's reply stream."""

    attempt: str
    text: str = ""  # the attempt's text so far (the final text when done)
    done: bool = False
    new_tokens: int = 0
    hit_token_limit: bool = False
    error: str | None = None  # the attempt failed; the job is over
    seconds: float = 0.0  # (final) the worker's time from taking the job to its answer

    def fields(self) -> dict[str, str]:
        data: dict[str, Any] = {k: v for k, v in asdict(self).items() if v not in (None, False, 0)}
        return {"chunk": json.dumps(data, ensure_ascii=False)}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Chunk:
        return cls(**json.loads(fields["chunk"]))

    def result(self) -> GenerationResult:
        return GenerationResult(self.text, self.new_tokens, self.hit_token_limit)


@dataclass(frozen=True)
class Heartbeat:
    """What a worker says about itself every `heartbeat_interval` seconds."""

    name: str
    device: str
    model: str
    quantization: str
    adapters: dict[str, str]  # character id -> version (hash of the adapter's weights)
    adapter_failures: dict[str, str] = field(default_factory=dict)
    batches: int = 0
    queue: int = 0  # jobs this worker holds, running or waiting for a batch
    at: float = 0.0  # time.time() when sent

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> Heartbeat:
        return cls(**json.loads(raw))


async def read_heartbeats(client: Any, keys: JobKeys) -> dict[str, Heartbeat]:
    """Every worker's last heartbeat, by name (stale ones included: the caller judges age)."""
    raw = await client.hgetall(keys.workers)
    return {name: Heartbeat.from_json(value) for name, value in raw.items()}


@dataclass(frozen=True)
class ReloadReply:
    worker: str
    ok: bool
    detail: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> ReloadReply:
        return cls(**json.loads(raw))

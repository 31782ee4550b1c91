"""The bot's side of worker mode: jobs go on a Redis Stream, answers come back per job.

See `bot.generation.jobs` for the keys. The bot never loads model weights in this mode (only
the tokenizer, for the prompt budget). What a user sees when something is wrong:
- no worker alive (no heartbeat for `heartbeat_timeout`): a notice at once, nothing queued;
- no worker starts the job within `job_timeout`: a notice, and the job is withdrawn, so it is
  never answered later;
- a worker dies mid-reply: another takes the job over after `claim_idle_seconds`; the text
  shown so far is replaced by the new attempt's, and only one reply is posted.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import deque
from typing import Any

from redis.exceptions import RedisError

from bot.config import Config
from bot.generation.backend import (
    BackendStatus,
    BackendUnavailable,
    ReloadOutcome,
    WorkerInfo,
    scoring_unavailable,
)
from bot.generation.jobs import (
    READ_BLOCK_MS,
    Chunk,
    Heartbeat,
    Job,
    JobKeys,
    ReloadReply,
    read_heartbeats,
)
from bot.generation.request import (
    GenerationRequest,
    GenerationResult,
    ScoreRequest,
    TextScore,
)
from bot.redis_connection import RedisConnection

RELOAD_TIMEOUT = 30.0  # seconds the workers get to load an adapter and answer
JOBS_MAXLEN = 10_000  # a bound on the job stream, far above any real queue
ALIVE_CHECK_INTERVAL = 1.0  # seconds a "some worker is alive" answer is reused

NO_WORKER = (
    "No model worker is running, so nobody can answer right now. "
    "(Admins: start one with `python -m bot worker`.)"
)
NOT_STARTED = (
    "The model workers are all busy or stuck: nobody took this message within {seconds:.0f} s. "
    "Please try again in a moment."
)
STALLED = (
    "The model worker answering this stopped, and no other worker took over. Please try again."
)


class WorkerBackend:
    mode = "worker"

    def __init__(
        self, config: Config, redis: RedisConnection, key_prefix: str, tokenizer: Any
    ) -> None:
        self.settings = config.backend.worker
        self.redis = redis
        self.keys = JobKeys(key_prefix)
        self.tokenizer = tokenizer
        self.in_flight = 0
        self.answered = 0
        self.overheads: deque[float] = deque(maxlen=1000)  # seconds per job, newest last
        self._alive_checked = (float("-inf"), False)  # (monotonic time, any worker alive)

    @property
    def client(self):
        return self.redis.client

    async def workers(self) -> list[Heartbeat]:
        """Workers whose last heartbeat is recent enough, by name."""
        now = time.time()
        beats = (await read_heartbeats(self.client, self.keys)).values()
        live = [b for b in beats if now - b.at <= self.settings.heartbeat_timeout]
        self._alive_checked = (time.monotonic(), bool(live))
        return sorted(live, key=lambda b: b.name)

    async def _any_worker(self) -> bool:
        """`workers()`, read at most once a second: a busy bot does not ask on every message."""
        checked_at, alive = self._alive_checked
        if time.monotonic() - checked_at > ALIVE_CHECK_INTERVAL:
            alive = bool(await self.workers())
        return alive

    async def score(self, requests: list[ScoreRequest]) -> list[TextScore]:
        raise scoring_unavailable(self.mode)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if not await self._any_worker():
            raise BackendUnavailable(NO_WORKER)
        started = time.perf_counter()
        job = Job.for_request(request, self.settings.job_timeout)
        # The reply stream expires on its own (result_ttl_seconds): no clean-up round trip.
        reply_key = self.keys.reply(job.id)
        entry_id = await self.client.xadd(
            self.keys.jobs, job.fields(), maxlen=JOBS_MAXLEN, approximate=True
        )
        self.in_flight += 1
        try:
            final = await self._follow(job, reply_key, entry_id, request)
        finally:
            self.in_flight -= 1
        self.answered += 1
        # What the queue cost this job: everything but the worker's own time on it.
        self.overheads.append(time.perf_counter() - started - final.seconds)
        return final.result()

    async def _follow(
        self, job: Job, reply_key: str, entry_id: str, request: GenerationRequest
    ) -> Chunk:
        """Read the job's reply stream until the current attempt is done."""
        last_id = "0-0"
        attempt: str | None = None
        seen: set[str] = set()  # attempts that wrote; a later one supersedes the earlier
        started = time.monotonic()
        progress = started
        stall_limit = self.settings.claim_idle_seconds + self.settings.job_timeout
        while True:
            now = time.monotonic()
            if attempt is None and now - started > self.settings.job_timeout:
                await self._withdraw(entry_id)
                raise BackendUnavailable(NOT_STARTED.format(seconds=self.settings.job_timeout))
            if attempt is not None and now - progress > stall_limit:
                raise BackendUnavailable(STALLED)
            answer = await self.client.xread({reply_key: last_id}, block=READ_BLOCK_MS)
            for _, entries in answer or []:
                for chunk_id, fields in entries:
                    last_id = chunk_id
                    chunk = Chunk.from_fields(fields)
                    if chunk.attempt != attempt:
                        if chunk.attempt in seen:
                            continue  # an attempt that was superseded: ignore its late text
                        seen.add(chunk.attempt)
                        attempt = chunk.attempt  # a new worker took over: its text counts
                    progress = time.monotonic()
                    if chunk.error:
                        raise RuntimeError(f"model worker {chunk.attempt}: {chunk.error}")
                    if request.on_text is not None and chunk.text:
                        request.on_text(chunk.text)
                    if chunk.done:
                        return chunk

    async def _withdraw(self, entry_id: str) -> None:
        """Take a job nobody started off the stream; a worker holding it sees it expired."""
        # If this fails, the job's expiry time still stops any worker from starting it.
        with contextlib.suppress(RedisError, OSError):
            await self.client.xdel(self.keys.jobs, entry_id)

    async def reload_adapter(self, character_id: str) -> list[ReloadOutcome]:
        expected = [b.name for b in await self.workers()]
        if not expected:
            return [ReloadOutcome("workers", False, "no model worker is running")]
        request_id = uuid.uuid4().hex
        reply_key = self.keys.control_reply(request_id)
        message = json.dumps({"op": "reload", "character": character_id, "id": request_id})
        await self.client.publish(self.keys.control, message)
        replies: dict[str, ReloadReply] = {}
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while len(replies) < len(expected) and time.monotonic() < deadline:
            popped = await self.client.blpop([reply_key], timeout=READ_BLOCK_MS / 1000)
            if popped:
                reply = ReloadReply.from_json(popped[1])
                replies[reply.worker] = reply
        outcomes = [ReloadOutcome(r.worker, r.ok, r.detail) for r in replies.values()]
        outcomes += [
            ReloadOutcome(name, False, f"no answer within {RELOAD_TIMEOUT:.0f} s")
            for name in expected
            if name not in replies
        ]
        return sorted(outcomes, key=lambda o: o.where)

    async def status(self) -> BackendStatus:
        beats = await self.workers()
        now = time.time()
        queued = await self.client.xlen(self.keys.jobs)
        oldest = None
        first = await self.client.xrange(self.keys.jobs, count=1)
        if first:
            oldest = max(0.0, now - int(first[0][0].split("-")[0]) / 1000)
        adapters = sorted({cid for b in beats for cid in b.adapters})
        failures = {cid: why for b in beats for cid, why in b.adapter_failures.items()}
        return BackendStatus(
            mode=self.mode,
            model=", ".join(sorted({b.model for b in beats})) or "(no worker)",
            device=", ".join(sorted({b.device for b in beats})) or "-",
            quantization=", ".join(sorted({b.quantization for b in beats})) or "-",
            adapters=adapters,
            adapter_failures=failures,
            queue_depth=queued,
            batches_run=sum(b.batches for b in beats),
            workers=[
                WorkerInfo(b.name, b.device, b.model, b.adapters, b.batches, b.queue, now - b.at)
                for b in beats
            ],
            oldest_pending_age=oldest,
            problem=None if beats else "no model worker is running (`python -m bot worker`)",
        )

    async def close(self) -> None:
        pass  # nothing of its own: Redis belongs to the services

"""`python -m bot worker`: a model worker. It loads the base model and every character's adapter,
takes jobs from the Redis Stream the bot writes (consumer group, see `bot.generation.jobs`),
runs them through the same batcher as the embedded mode (jobs that arrive together become one
mixed-adapter batch), and streams each answer back.

A job is acknowledged only after its final answer is written. A worker that dies leaves its
jobs pending in the group; another worker takes them over after `claim_idle_seconds` without
progress (XAUTOCLAIM). A live worker keeps the jobs it is running from looking idle by claiming
them again (XCLAIM ... JUSTID) while it works on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from bot.characters import CharacterRegistry, adapter_dir, adapter_version
from bot.config import Config
from bot.engine import Batcher, InferenceEngine
from bot.generation.embedded import load_adapters, reload_into
from bot.generation.jobs import (
    GROUP,
    READ_BLOCK_MS,
    Chunk,
    Heartbeat,
    Job,
    JobKeys,
    ReloadReply,
)
from bot.redis_connection import RedisConnection

log = logging.getLogger(__name__)

TEXT_INTERVAL = 0.1  # seconds between two partial-text entries of one job
REPLY_MAXLEN = 64  # entries a reply stream keeps (the newest carries the whole text)


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ModelWorker:
    def __init__(
        self,
        config: Config,
        redis: RedisConnection,
        engine: InferenceEngine,
        *,
        name: str,
        key_prefix: str,
    ) -> None:
        self.config = config
        self.settings = config.backend.worker
        self.redis = redis
        self.engine = engine
        self.name = name
        self.keys = JobKeys(key_prefix)
        self.batcher = Batcher(
            engine,
            max_batch_size=config.batching.max_batch_size,
            max_wait_ms=config.batching.max_wait_ms,
        )
        self.capacity = config.batching.max_batch_size  # jobs held at once
        self._running: dict[str, asyncio.Task[None]] = {}  # stream entry id -> its task
        self._versions: dict[str, str] = {}
        self._stopping = asyncio.Event()

    @property
    def client(self):
        return self.redis.client

    # -- the loops ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stop()`; Redis outages are waited out, never fatal."""
        await self.batcher.start()
        self._refresh_versions()
        loops = [
            asyncio.create_task(self._heartbeats(), name="worker-heartbeat"),
            asyncio.create_task(self._claims(), name="worker-claims"),
            asyncio.create_task(self._control(), name="worker-control"),
        ]
        log.info("Worker %s serving %d adapters", self.name, len(self.engine.adapters))
        try:
            await self._read_jobs()
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._drain()
            await self.batcher.close()
            with contextlib.suppress(RedisError, OSError):
                await self.client.hdel(self.keys.workers, self.name)

    def stop(self) -> None:
        self._stopping.set()

    async def _read_jobs(self) -> None:
        group_ready = False
        while not self._stopping.is_set():
            room = self.capacity - len(self._running)
            if room <= 0:
                await asyncio.sleep(0.01)
                continue
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                answer = await self.client.xreadgroup(
                    GROUP,
                    self.name,
                    {self.keys.jobs: ">"},
                    count=min(room, self.settings.jobs_per_read),
                    block=READ_BLOCK_MS,
                )
            except ResponseError as exc:
                # A Redis restarted without persistence has lost the group: make it again.
                group_ready = "NOGROUP" not in str(exc)
                if group_ready:
                    await self._redis_trouble(exc)
                continue
            except (RedisError, OSError) as exc:
                await self._redis_trouble(exc)
                continue
            for _, entries in answer or []:
                for entry_id, fields in entries:
                    self._start(entry_id, fields)

    async def _claims(self) -> None:
        """Keep our running jobs from looking idle, and take over jobs of dead workers."""
        interval = self.settings.claim_idle_seconds / 3
        idle_ms = int(self.settings.claim_idle_seconds * 1000)
        while True:
            await asyncio.sleep(interval)
            try:
                if self._running:
                    await self.client.xclaim(
                        self.keys.jobs, GROUP, self.name, 0, list(self._running), justid=True
                    )
                room = self.capacity - len(self._running)
                if room <= 0:
                    continue
                _, entries, *_ = await self.client.xautoclaim(
                    self.keys.jobs, GROUP, self.name, idle_ms, "0-0", count=room
                )
            except (RedisError, OSError) as exc:
                log.debug("Claim check failed: %r", exc)
                continue
            for entry_id, fields in entries:
                if entry_id is not None:
                    log.warning("Worker %s takes over job entry %s", self.name, entry_id)
                    self._start(entry_id, fields)
            if any(entry_id is None for entry_id, _ in entries):
                await self._drop_withdrawn()

    async def _drop_withdrawn(self) -> None:
        """Jobs withdrawn (XDEL) while pending: Redis 7 drops them from the group itself,
        Redis 6.2 (the embedded server) claims them as empty entries without their ids."""
        pending = await self.client.xpending_range(self.keys.jobs, GROUP, "-", "+", 100)
        for entry in pending:
            entry_id = entry["message_id"]
            if not await self.client.xrange(self.keys.jobs, entry_id, entry_id):
                await self.client.xack(self.keys.jobs, GROUP, entry_id)

    async def _heartbeats(self) -> None:
        while True:
            beat = Heartbeat(
                name=self.name,
                device=str(self.engine.device),
                model=self.engine.model_name,
                quantization=self.engine.quantization,
                adapters={
                    cid: self._versions.get(cid) or "?" for cid in sorted(self.engine.adapters)
                },
                adapter_failures=dict(self.engine.adapter_failures),
                batches=self.batcher.batches_run,
                queue=len(self._running),
                at=time.time(),
            )
            try:
                await self.client.hset(self.keys.workers, self.name, beat.to_json())
            except (RedisError, OSError) as exc:
                log.debug("Heartbeat not sent: %r", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _control(self) -> None:
        """Admin requests on the pub/sub channel; reconnects after a Redis outage."""
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.keys.control)
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=READ_BLOCK_MS / 1000
                        )
                        if message is not None:
                            await self._handle_control(json.loads(message["data"]))
            except (RedisError, OSError) as exc:
                log.debug("Control channel lost: %r", exc)
                await asyncio.sleep(1)

    # -- one job --------------------------------------------------------------------------

    def _start(self, entry_id: str, fields: dict[str, str]) -> None:
        if entry_id in self._running:
            return
        task = asyncio.create_task(self._run_job(entry_id, fields), name=f"job-{entry_id}")
        self._running[entry_id] = task
        task.add_done_callback(lambda _: self._running.pop(entry_id, None))

    async def _run_job(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            job = Job.from_fields(fields)
        except (KeyError, ValueError, TypeError) as exc:
            log.error("Job entry %s is malformed, dropped: %r", entry_id, exc)
            await self._finish(entry_id)
            return
        if time.time() > job.expires_at:
            # The bot gave up on it and told the user: an answer now would come out of nowhere.
            log.info("Job %s expired before it started, dropped", job.id)
            await self._finish(entry_id)
            return
        attempt = f"{self.name}/{uuid.uuid4().hex[:6]}"
        reply_key = self.keys.reply(job.id)
        loop = asyncio.get_running_loop()
        latest = {"text": "", "sent": "", "at": 0.0}
        wake = asyncio.Event()

        def on_text(text: str) -> None:  # engine thread
            latest["text"] = text
            loop.call_soon_threadsafe(wake.set)

        async def stream_text() -> None:
            while True:
                await wake.wait()
                wake.clear()
                await asyncio.sleep(max(0.0, latest["at"] + TEXT_INTERVAL - time.monotonic()))
                if latest["text"] != latest["sent"]:
                    latest["sent"], latest["at"] = latest["text"], time.monotonic()
                    try:
                        await self._write(reply_key, Chunk(attempt, latest["text"]))
                    except (RedisError, OSError) as exc:  # partial text is best effort
                        log.debug("Partial text of job %s not written: %r", job.id, exc)

        streamer = asyncio.create_task(stream_text())
        started = time.perf_counter()
        try:
            result = await self.batcher.submit(job.request(on_text))
            final = Chunk(
                attempt,
                result.text,
                done=True,
                new_tokens=result.new_tokens,
                hit_token_limit=result.hit_token_limit,
                seconds=time.perf_counter() - started,
            )
        except asyncio.CancelledError:
            raise  # stopping: the job stays pending, another worker takes it over
        except Exception as exc:
            log.exception("Job %s failed", job.id)
            final = Chunk(attempt, error=f"generation failed: {exc.__class__.__name__}")
        finally:
            streamer.cancel()
        # The answer and the acknowledgement land together, retried until they do: an answer
        # that is lost would be generated again elsewhere, and a job still pending after its
        # answer was read could be taken over and answered twice.
        await self._finish(entry_id, answer=(reply_key, final))

    async def _write(self, reply_key: str, chunk: Chunk) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            self._queue_write(pipe, reply_key, chunk)
            await pipe.execute()

    def _queue_write(self, pipe: Pipeline, reply_key: str, chunk: Chunk) -> None:
        pipe.xadd(reply_key, chunk.fields(), maxlen=REPLY_MAXLEN, approximate=True)
        pipe.expire(reply_key, self.settings.result_ttl_seconds)

    async def _finish(self, entry_id: str, answer: tuple[str, Chunk] | None = None) -> None:
        """Acknowledge the job and remove it from the stream (it holds only open jobs), in
        the same transaction as its final answer (reply key, chunk) when there is one."""
        while True:
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    if answer is not None:
                        self._queue_write(pipe, *answer)
                    pipe.xack(self.keys.jobs, GROUP, entry_id)
                    pipe.xdel(self.keys.jobs, entry_id)
                    await pipe.execute()
                return
            except (RedisError, OSError) as exc:
                await self._redis_trouble(exc)

    async def _drain(self) -> None:
        """On shutdown: cancel running jobs; they stay pending for another worker."""
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    # -- admin ----------------------------------------------------------------------------

    async def _handle_control(self, request: dict) -> None:
        if request.get("op") != "reload":
            return
        character_id = str(request.get("character"))
        characters_dir = self.config.characters_path
        ok, detail = await reload_into(self.engine, self.batcher, characters_dir, character_id)
        if ok:
            version = adapter_version(adapter_dir(characters_dir, character_id))
            self._versions[character_id] = version
            detail = f"{detail} version {version}"
        reply = ReloadReply(self.name, ok, detail)
        key = self.keys.control_reply(str(request.get("id")))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, reply.to_json())
            pipe.expire(key, 60)
            await pipe.execute()

    def _refresh_versions(self) -> None:
        self._versions = {cid: adapter_version(p) for cid, p in self.engine.adapters.items()}

    # -- Redis ----------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.keys.jobs, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _redis_trouble(self, exc: BaseException) -> None:
        log.warning("Redis unavailable (%r); retrying in 1 s", exc)
        await asyncio.sleep(1)


async def run_worker(config: Config, name: str | None = None) -> None:
    """Load the model and every adapter, then serve jobs until interrupted."""
    from bot.redis_connection import connect_redis

    registry = CharacterRegistry.load(config.characters_path)
    engine = InferenceEngine.from_config(config)
    load_adapters(engine, registry)
    redis = await connect_redis(config.redis_url, config.data_path)
    redis.start_supervisor(config.redis.check_interval)
    worker = ModelWorker(
        config,
        redis,
        engine,
        name=name or default_name(),
        key_prefix=config.redis.key_prefix,
    )
    # `docker stop` and systemd send SIGTERM: stop taking jobs; running ones stay pending in
    # the group, so another worker finishes them.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    try:
        await worker.run()
    finally:
        await redis.close()

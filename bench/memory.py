"""Resident memory of the engine with 0 and with 4 LoRA adapters loaded.

.venv/bin/python -m bench.memory [--r 8]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import tempfile
from pathlib import Path

import psutil

from bot.config import Config
from bot.engine import InferenceEngine
from finetune.adapters import save_random_adapter

ADAPTERS = ["goku", "naruto", "eren", "light"]
MIB = 1024 * 1024


def rss() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / MIB


def make_adapters(folder: str, r: int) -> None:
    """In a child process, so copying the model for the adapters does not inflate our RSS."""
    engine = InferenceEngine.from_config(Config())
    for i, name in enumerate(ADAPTERS):
        save_random_adapter(engine.model, Path(folder) / name, seed=i, r=r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r", type=int, default=8, help="LoRA rank of the adapters")
    parser.add_argument("--quantization", choices=["none", "nf4"], default="none")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        child = multiprocessing.get_context("spawn").Process(
            target=make_adapters, args=(tmp, args.r)
        )
        child.start()
        child.join()
        paths = [Path(tmp) / name for name in ADAPTERS]
        files = sum(f.stat().st_size for p in paths for f in p.iterdir()) / MIB
        before = rss()
        engine = InferenceEngine.from_config(Config(model={"quantization": args.quantization}))
        base = rss()
        for name, path in zip(ADAPTERS, paths, strict=True):
            engine.load_adapter(name, path)
        loaded = rss()
    print(f"model: {engine.model_name}, quantization {engine.quantization}, LoRA r={args.r} on q/v")
    print(f"process before the engine: {before:.0f} MiB")
    print(f"engine, 0 adapters: {base:.0f} MiB resident")
    print(
        f"engine, 4 adapters: {loaded:.0f} MiB resident (+{loaded - base:.1f} MiB; "
        f"adapter files {files:.1f} MiB in all)"
    )
    print(f"ratio 4 adapters / 0 adapters: {loaded / base:.3f}")


if __name__ == "__main__":
    main()

"""Batched mixed-adapter generation vs one request at a time with `set_adapter`.

8 concurrent requests over 4 LoRA adapters (random weights, made here) go through the batcher
(one forward pass per step for all 8), then the same 8 run one by one, switching the active
adapter with peft's `set_adapter` before each. Greedy decoding in both modes.

    .venv/bin/python -m bench.batching [--max-new-tokens 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch

from bot.config import Config
from bot.engine import Batcher, GenerationRequest, InferenceEngine, SamplingSettings
from finetune.adapters import save_random_adapter

ADAPTERS = ["goku", "naruto", "eren", "light"]
QUESTIONS = [
    "Who are you and what do you want?",
    "Tell me about your best friend.",
    "What would you do with a free day?",
    "What is your biggest dream?",
    "How do you deal with losing?",
    "What food do you like most?",
    "Describe your home town.",
    "Give me one piece of advice.",
]


def prompts(engine: InferenceEngine) -> list[str]:
    return [
        engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in QUESTIONS
    ]


async def run_batched(engine: InferenceEngine, requests: list[GenerationRequest]) -> list:
    batcher = Batcher(engine, max_batch_size=8, max_wait_ms=50)
    try:
        return list(await asyncio.gather(*(batcher.submit(r) for r in requests)))
    finally:
        await batcher.close()


def run_one_by_one(engine: InferenceEngine, requests: list[GenerationRequest]) -> list[str]:
    """Baseline: the classic single-adapter server, `set_adapter` then generate, per request."""
    texts = []
    tokens = 0
    for request in requests:
        inputs = engine.tokenizer(request.prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode(), engine.using_adapter(request.adapter) as model:
            out = model.generate(
                **inputs,
                max_new_tokens=request.settings.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=request.settings.repetition_penalty,
                pad_token_id=engine.tokenizer.pad_token_id,
            )
        result = engine._result(out[0, inputs["input_ids"].shape[1] :], request.settings)
        texts.append(result.text)
        tokens += result.new_tokens
    return texts, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="timed repetitions of each mode")
    args = parser.parse_args()
    torch.manual_seed(0)

    engine = InferenceEngine.from_config(Config())
    with tempfile.TemporaryDirectory() as tmp:
        for seed, name in enumerate(ADAPTERS):
            path = save_random_adapter(engine.model, Path(tmp) / name, seed=seed)
        for name in ADAPTERS:
            engine.load_adapter(name, Path(tmp) / name)
    del path

    greedy = SamplingSettings(args.max_new_tokens, temperature=0, top_p=1.0, repetition_penalty=1.0)
    requests = [
        GenerationRequest(p, greedy, adapter=ADAPTERS[i % len(ADAPTERS)])
        for i, p in enumerate(prompts(engine))
    ]
    asyncio.run(run_batched(engine, requests[:2]))  # warm-up
    run_one_by_one(engine, requests[:1])

    batched_times, single_times = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        batched = asyncio.run(run_batched(engine, requests))
        batched_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        single_texts, single_tokens = run_one_by_one(engine, requests)
        single_times.append(time.perf_counter() - start)

    batched_tokens = sum(r.new_tokens for r in batched)
    batched_tps = batched_tokens / min(batched_times)
    single_tps = single_tokens / min(single_times)
    same = sum(a.text == b for a, b in zip(batched, single_texts, strict=True))
    print(
        f"model: {engine.model_name} on {engine.device}, quantization {engine.quantization}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"8 requests over {len(ADAPTERS)} adapters, greedy, max {args.max_new_tokens} new tokens, "
        f"best of {args.rounds}"
    )
    print(
        f"batched (one pass, adapter_names): {batched_tokens} tokens in "
        f"{min(batched_times):.2f} s = {batched_tps:.1f} tokens/s"
    )
    print(
        f"one by one (using_adapter):        {single_tokens} tokens in "
        f"{min(single_times):.2f} s = {single_tps:.1f} tokens/s"
    )
    print(f"ratio batched / one-by-one: {batched_tps / single_tps:.2f}x")
    print(f"identical outputs: {same} of {len(requests)}")
    # Static batching runs every row until the longest is done; the per-step figure shows the
    # throughput when all rows are busy (replies that run to max_new_tokens).
    steps = max(r.new_tokens for r in batched)
    per_step_batched = min(batched_times) / steps
    per_token_single = min(single_times) / single_tokens
    print(
        f"per decoding step: batch of 8 {per_step_batched * 1000:.0f} ms, one row "
        f"{per_token_single * 1000:.0f} ms -> {8 * per_token_single / per_step_batched:.2f}x "
        f"when all 8 rows are busy; busy share here {batched_tokens / (8 * steps):.0%}"
    )
    for i, (a, b) in enumerate(zip(batched, single_texts, strict=True)):
        if a.text != b:
            print(f"  differs #{i} ({requests[i].adapter}):")
            print(f"    batched: {a.text!r}\n    single:  {b!r}")


if __name__ == "__main__":
    main()

"""The asyncio batcher over the real engine."""

import asyncio

import pytest

from bot.engine import Batcher, BatcherClosed, GenerationRequest, SamplingSettings

GREEDY = SamplingSettings(max_new_tokens=8, temperature=0, top_p=1.0, repetition_penalty=1.0)


def request(engine, text: str, settings: SamplingSettings = GREEDY) -> GenerationRequest:
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return GenerationRequest(prompt, settings)


async def test_concurrent_requests_share_one_batch(engine):
    batcher = Batcher(engine, max_batch_size=8, max_wait_ms=500)
    try:
        requests = [request(engine, f"Count to {i}.") for i in range(4)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        assert batcher.batches_run == 1
        assert [r.text for r in results] == [r.text for r in engine.generate(requests)]
    finally:
        await batcher.close()


async def test_batch_size_cap_and_settings_grouping(engine):
    batcher = Batcher(engine, max_batch_size=2, max_wait_ms=300)
    other = SamplingSettings(max_new_tokens=4, temperature=0, top_p=1.0, repetition_penalty=1.0)
    try:
        requests = [request(engine, "Hi"), request(engine, "Hey", other), request(engine, "Yo")]
        requests.append(request(engine, "Hello"))
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        # [Hi, Yo] share settings (cap 2); then [Hey] with its own settings; then [Hello].
        assert batcher.batches_run == 3
        assert results[1].new_tokens <= 4
        assert [r.text for r in results] == [engine.generate([r])[0].text for r in requests]
    finally:
        await batcher.close()


async def test_event_loop_keeps_running_during_generation(batcher, redis_connection):
    long = SamplingSettings(max_new_tokens=48, temperature=0, top_p=1.0, repetition_penalty=1.0)
    task = asyncio.create_task(batcher.submit(request(batcher.engine, "Tell me a story.", long)))
    while batcher.batches_run == 0 and batcher.queue_depth:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the batch is now on the engine thread
    assert await redis_connection.ping()  # other coroutines run meanwhile
    assert not task.done()
    assert (await task).new_tokens > 0


async def test_failed_batch_fails_its_requests_not_the_loop(batcher):
    bad = GenerationRequest("", GREEDY)  # nothing to generate from
    with pytest.raises(Exception):  # noqa: B017 - whatever the model raises is passed through
        await batcher.submit(bad)
    assert (await batcher.submit(request(batcher.engine, "Still there?"))).text


async def test_close_refuses_new_and_cancels_waiting(engine):
    batcher = Batcher(engine, max_batch_size=1, max_wait_ms=0)
    tasks = [asyncio.create_task(batcher.submit(request(engine, f"Hi {i}"))) for i in range(4)]
    await asyncio.sleep(0.05)
    await batcher.close()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert any(isinstance(o, BatcherClosed) for o in outcomes)
    with pytest.raises(BatcherClosed):
        await batcher.submit(request(engine, "late"))


async def test_run_executes_on_the_engine_thread(batcher):
    import threading

    name = await batcher.run(lambda: threading.current_thread().name)
    assert name.startswith("engine")

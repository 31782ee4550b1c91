"""The inference engine on the real embedded model (loaded once per session)."""

import itertools

import pytest
import torch

from bot.engine import AdapterError, GenerationRequest, InferenceEngine, SamplingSettings
from bot.engine.rows import shared_prefix_length
from tests.helpers import make_config

GREEDY = SamplingSettings(max_new_tokens=12, temperature=0, top_p=1.0, repetition_penalty=1.0)


def chat_prompt(engine, text: str) -> str:
    return engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def texts(engine, requests):
    return [r.text for r in engine.generate(requests)]


def test_mixed_adapter_batch_equals_one_by_one(clean_engine, random_adapters):
    engine = clean_engine
    for name, path in random_adapters.items():
        engine.load_adapter(name, path)
    requests = [
        GenerationRequest(chat_prompt(engine, "Who are you?"), GREEDY, adapter=None),
        GenerationRequest(chat_prompt(engine, "Who are you?"), GREEDY, adapter="alpha"),
        GenerationRequest(chat_prompt(engine, "Tell me a story about a dragon."), GREEDY, "beta"),
        GenerationRequest(chat_prompt(engine, "Hi"), GREEDY, adapter="unknown-uses-base"),
    ]
    batched = texts(engine, requests)
    one_by_one = [texts(engine, [r])[0] for r in requests]
    assert batched == one_by_one
    # The adapters really change the output (random LoRA weights are not a no-op).
    assert batched[0] != batched[1]


CARD = "You are Captain Mira of the starship Lark. " * 8  # a long shared system prompt


def card_prompt(engine, text: str) -> str:
    return engine.tokenizer.apply_chat_template(
        [{"role": "system", "content": CARD}, {"role": "user", "content": text}],
        tokenize=False,
        add_generation_prompt=True,
    )


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_rows_sharing_a_card_run_it_once_with_the_same_answers(
    clean_engine, random_adapters, adapter
):
    engine = clean_engine
    engine.load_adapter("alpha", random_adapters["alpha"])
    messages = ["Hi", "Where are we flying today, captain?", "Status report!"]
    requests = [GenerationRequest(card_prompt(engine, m), GREEDY, adapter) for m in messages]
    shared = texts(engine, requests)
    engine.min_shared_prefix = 10**9  # sharing off: every row runs the whole card
    try:
        assert texts(engine, requests) == shared
    finally:
        engine.min_shared_prefix = InferenceEngine(None, None).min_shared_prefix
    assert len(set(shared)) > 1  # each row answered its own message


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # not the whole shorter row
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0


def test_seeded_sampling_is_repeatable(engine):
    settings = SamplingSettings(
        max_new_tokens=12, temperature=1.0, top_p=0.95, repetition_penalty=1.0
    )
    request = GenerationRequest(chat_prompt(engine, "Say something surprising."), settings)
    first = engine.generate([request], seed=123)[0].text
    assert engine.generate([request], seed=123)[0].text == first
    others = {engine.generate([request], seed=s)[0].text for s in range(1, 6)}
    assert len(others) > 1  # sampling, not greedy


def test_token_limit_is_reported(engine):
    short = SamplingSettings(max_new_tokens=3, temperature=0, top_p=1.0, repetition_penalty=1.0)
    result = engine.generate([GenerationRequest(chat_prompt(engine, "Write an essay."), short)])[0]
    assert result.hit_token_limit and result.new_tokens == 3
    done = engine.generate([GenerationRequest(chat_prompt(engine, "Say only: yes"), GREEDY)])[0]
    assert done.new_tokens <= GREEDY.max_new_tokens
    assert done.hit_token_limit == (done.new_tokens == GREEDY.max_new_tokens)


def test_streaming_reports_the_growing_text(engine):
    seen: list[str] = []
    request = GenerationRequest(chat_prompt(engine, "Who are you?"), GREEDY, on_text=seen.append)
    silent = GenerationRequest(chat_prompt(engine, "Hello"), GREEDY)
    result = engine.generate([request, silent])[0]
    assert len(seen) > 1
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(seen))
    assert seen[-1] == result.text


def test_broken_adapter_refused_and_old_one_keeps_serving(clean_engine, random_adapters, tmp_path):
    engine = clean_engine
    engine.load_adapter("alpha", random_adapters["alpha"])
    request = GenerationRequest(chat_prompt(engine, "Who are you?"), GREEDY, adapter="alpha")
    before = texts(engine, [request])

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(
        (random_adapters["alpha"] / "adapter_config.json").read_text()
    )
    (broken / "adapter_model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(AdapterError, match="cannot load adapter"):
        engine.load_adapter("alpha", broken)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        engine.load_adapter("alpha", broken)
    with pytest.raises(AdapterError, match=r"no adapter_config\.json"):
        engine.load_adapter("alpha", tmp_path / "missing")

    assert texts(engine, [request]) == before
    assert engine.adapters == {"alpha": random_adapters["alpha"]}


def test_reload_swaps_and_unload_returns_to_base(clean_engine, random_adapters):
    engine = clean_engine
    prompt = chat_prompt(engine, "Who are you?")
    base = texts(engine, [GenerationRequest(prompt, GREEDY)])
    engine.load_adapter("beta", random_adapters["beta"])
    beta = texts(engine, [GenerationRequest(prompt, GREEDY, adapter="beta")])
    engine.load_adapter("alpha", random_adapters["alpha"])
    alpha = texts(engine, [GenerationRequest(prompt, GREEDY, adapter="alpha")])
    engine.load_adapter("alpha", random_adapters["beta"])  # reload from another folder
    assert texts(engine, [GenerationRequest(prompt, GREEDY, adapter="alpha")]) == beta != alpha
    engine.unload_adapter("alpha")
    engine.unload_adapter("beta")
    assert engine.adapters == {}
    assert texts(engine, [GenerationRequest(prompt, GREEDY, adapter="beta")]) == base


def test_nf4_quantized_base_runs_on_cpu(random_adapters):
    config = make_config(model={"quantization": "nf4"})
    engine = InferenceEngine.from_config(config)
    assert engine.quantization == "nf4"
    from bitsandbytes.nn import Linear4bit

    quantized = [m for m in engine.model.modules() if isinstance(m, Linear4bit)]
    assert quantized and quantized[0].weight.quant_type == "nf4"
    engine.load_adapter("alpha", random_adapters["alpha"])
    few = SamplingSettings(max_new_tokens=4, temperature=0, top_p=1.0, repetition_penalty=1.0)
    prompt = chat_prompt(engine, "Hi")
    results = engine.generate(
        [GenerationRequest(prompt, few), GenerationRequest(prompt, few, "alpha")]
    )
    assert all(r.new_tokens > 0 and r.text.strip() for r in results)
    del engine
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def next_token_logits(engine, model, text: str) -> torch.Tensor:
    inputs = engine.tokenizer(
        chat_prompt(engine, text), return_tensors="pt", add_special_tokens=False
    )
    with torch.inference_mode():
        return model(**inputs).logits[0, -1]


def test_using_adapter_scores_as_generate_answers_and_leaves_it_alone(
    clean_engine, random_adapters
):
    engine = clean_engine
    with engine.using_adapter(None) as model:  # no adapter loaded yet: the bare model
        bare = next_token_logits(engine, model, "Who are you?")
    for name, path in random_adapters.items():
        engine.load_adapter(name, path)
    one = SamplingSettings(max_new_tokens=1, temperature=0, top_p=1.0, repetition_penalty=1.0)
    requests = [
        GenerationRequest(chat_prompt(engine, "Who are you?"), one, adapter=adapter)
        for adapter in (None, "alpha", "beta")
    ]
    first_tokens = texts(engine, requests)

    scores = {}
    for adapter in (None, "alpha", "beta"):
        with engine.using_adapter(adapter) as model:
            scores[adapter] = next_token_logits(engine, model, "Who are you?")
            with pytest.raises(RuntimeError, match="generate inside using_adapter"):
                engine.generate(requests)
    assert torch.allclose(scores[None], bare, atol=1e-5)
    assert not torch.allclose(scores["alpha"], scores[None])
    assert not torch.allclose(scores["alpha"], scores["beta"])
    # Each scored as generate answers under the same adapter: greedy picks the top token.
    decode = engine.tokenizer.decode
    picked = [decode([int(scores[a].argmax())], skip_special_tokens=True) for a in scores]
    assert picked == first_tokens
    assert texts(engine, requests) == first_tokens  # generation as before the blocks

    unknown = pytest.raises(
        AdapterError, match="no adapter loaded for 'gamma'; loaded: alpha, beta"
    )
    with unknown, engine.using_adapter("gamma"):
        pass

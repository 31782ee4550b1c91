"""Persona guidance and persona scoring in the engine, on the real embedded model."""

from dataclasses import replace

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from bot.engine import GenerationRequest, SamplingSettings
from bot.engine.guidance import guided_logprobs
from bot.generation import ScoreRequest
from tests.test_engine import card_prompt, chat_prompt

GREEDY = SamplingSettings(max_new_tokens=10, temperature=0, top_p=1.0, repetition_penalty=1.1)
GUIDED = replace(GREEDY, persona_guidance=1.5)
MESSAGES = ["Where are we flying today, captain?", "Who are you?"]


def requests(engine, settings, adapters):
    return [
        GenerationRequest(
            card_prompt(engine, m), settings, adapter, bare_prompt=chat_prompt(engine, m)
        )
        for m, adapter in zip(MESSAGES, adapters, strict=True)
    ]


def new_tokens(engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def unbatched_reference(engine, request: GenerationRequest) -> list[int]:
    """One prompt, no cache, no padding, no shared prefix: both rows re-run in full each step."""
    settings = request.settings
    penalty = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)
    cond = torch.tensor([new_tokens(engine, request.prompt)])
    bare = torch.tensor([new_tokens(engine, request.bare_prompt)])
    out = []
    with torch.inference_mode():
        for _ in range(settings.max_new_tokens):
            with engine.using_adapter(request.adapter) as model:
                cond_logits = model(input_ids=cond).logits[:, -1]
            with engine.using_adapter(None) as model:
                bare_logits = model(input_ids=bare).logits[:, -1]
            scores = guided_logprobs(cond_logits, bare_logits, settings.persona_guidance)
            token = int(penalty(cond, scores).argmax(-1))
            if token in (engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id):
                break
            out.append(token)
            cond = torch.cat([cond, torch.tensor([[token]])], 1)
            bare = torch.cat([bare, torch.tensor([[token]])], 1)
    return out


def test_guidance_off_is_todays_greedy_text(clean_engine, random_adapters):
    engine = clean_engine
    engine.load_adapter("alpha", random_adapters["alpha"])
    off = requests(engine, GREEDY, ["alpha", None])
    without_bare = [replace(r, bare_prompt=None) for r in off]
    assert [r.text for r in engine.generate(off)] == [r.text for r in engine.generate(without_bare)]


@pytest.mark.parametrize("adapters", [("alpha", "alpha"), ("alpha", "beta")])
def test_guided_batch_equals_unbatched_reference(clean_engine, random_adapters, adapters):
    engine = clean_engine
    for name in set(adapters):
        engine.load_adapter(name, random_adapters[name])
    batch = requests(engine, GUIDED, list(adapters))
    results = engine.generate(batch)
    for request, result in zip(batch, results, strict=True):
        assert new_tokens(engine, result.text) == unbatched_reference(engine, request)
    # Guidance changes the answer: the same prompts unguided say something else.
    unguided = engine.generate(requests(engine, GREEDY, list(adapters)))
    assert [r.text for r in results] != [r.text for r in unguided]


def test_guidance_streams_the_guided_text(clean_engine):
    engine = clean_engine
    seen: list[str] = []
    request = replace(requests(engine, GUIDED, [None, None])[0], on_text=seen.append)
    (result,) = engine.generate([request])
    assert seen and seen[-1] == result.text


def test_guidance_needs_the_bare_prompt(clean_engine):
    request = GenerationRequest(card_prompt(clean_engine, "Hi"), GUIDED)
    with pytest.raises(ValueError, match="bare_prompt"):
        clean_engine.generate([request])


def test_score_matches_one_row_at_a_time_and_prefers_the_own_adapter(clean_engine, random_adapters):
    engine = clean_engine
    engine.load_adapter("alpha", random_adapters["alpha"])
    prompt = card_prompt(engine, MESSAGES[0])
    # alpha's greedy text (each token its argmax) is likelier under alpha than under the base.
    plain = replace(GREEDY, repetition_penalty=1.0)
    (own,) = engine.generate([GenerationRequest(prompt, plain, "alpha")])
    rows = [
        ScoreRequest(prompt, own.text, "alpha"),
        ScoreRequest(prompt, "The weather is nice in Paris.", "alpha"),
        ScoreRequest(prompt, own.text, None),
        ScoreRequest(chat_prompt(engine, MESSAGES[0]), own.text, None),
    ]
    batched = engine.score(rows)
    single = [engine.score([row])[0] for row in rows]
    for b, s in zip(batched, single, strict=True):
        assert b.tokens == s.tokens > 0
        assert b.logprob == pytest.approx(s.logprob, abs=1e-3)
    assert batched[0].mean > batched[2].mean  # own adapter vs base, same prompt
    # The same sum by hand: the model's log-probability of each continuation token.
    ids = new_tokens(engine, prompt)
    target = new_tokens(engine, own.text)
    with engine.using_adapter("alpha") as model, torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids + target])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)[len(ids) - 1 : -1]
    by_hand = float(logprobs.gather(1, torch.tensor(target)[:, None]).sum())
    assert batched[0].logprob == pytest.approx(by_hand, abs=1e-3)

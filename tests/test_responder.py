"""Candidates, the persona score and guards together, on the real embedded model and the real
adapters of the seed cast."""

import re

import pytest

from bot.characters import CharacterRegistry
from bot.config import PROJECT_ROOT
from bot.engine import Batcher
from bot.generation.embedded import EmbeddedBackend
from bot.persona_score import ECHO_WEIGHT, overlap, persona_score
from bot.prompt import build_prompt
from bot.responder import Responder, bare_prompt
from tests.helpers import make_config, user_turn, write_character

SAMPLED = {"temperature": 0.9, "max_new_tokens": 16}


def test_overlap_counts_the_replys_ngrams_found_in_the_other_text():
    assert overlap("I like to eat rice", "Do you like to eat rice?") == pytest.approx(2 / 3)
    assert overlap("Kamehameha!", "What is your attack?") == 0.0
    assert overlap("Hi", "hi there") == 1.0  # fewer words than n: the words themselves
    assert overlap("", "anything") == 0.0


def test_persona_score_penalizes_echo_and_repetition():
    message = "What do you think of Zeno?"
    fresh = persona_score(0.5, "Mr. Zenny is scary strong!", message, [])
    echo = persona_score(0.5, "What do you think of Zeno?", message, [])
    said = persona_score(0.5, "Mr. Zenny is scary strong!", message, ["Mr. Zenny is scary strong!"])
    assert fresh == 0.5
    assert echo == pytest.approx(0.5 - ECHO_WEIGHT)
    assert said < fresh


@pytest.fixture
async def cast_backend(engine):
    """The seed cast's adapters in the shared engine (taken out again afterwards)."""
    registry = CharacterRegistry.load(PROJECT_ROOT / "characters")
    for character in registry:
        engine.load_adapter(character.id, character.adapter_path)
    batcher = Batcher(engine, max_batch_size=8, max_wait_ms=20)
    yield registry, EmbeddedBackend(engine, batcher, PROJECT_ROOT / "characters")
    await batcher.close()
    for character in registry:
        engine.unload_adapter(character.id)


def responder_for(backend, cast, **generation):
    config = make_config(generation=generation)
    return Responder(generation=config.generation, cast=cast, backend=backend)


async def test_the_persona_score_prefers_the_own_adapters_reply(cast_backend):
    registry, backend = cast_backend
    goku, light = registry.get("goku"), registry.get("light")
    message = user_turn("What do you want to do tomorrow?")
    greedy = responder_for(backend, registry, temperature=0.0, max_new_tokens=24)
    # The same message answered by Goku and by Light, each with his own card and adapter.
    own = await greedy.respond(goku, prompt_for(backend, goku, message), message, [])
    other = await greedy.respond(light, prompt_for(backend, light, message), message, [])
    assert own.text != other.text
    pair = [own.candidates[0], other.candidates[0]]
    prompt = prompt_for(backend, goku, message)
    bare = bare_prompt(prompt, backend.tokenizer)
    scored = await greedy._scored(goku, prompt, bare, message, [], pair)
    assert scored[0].score > scored[1].score


def prompt_for(backend, character, message, history=()):
    return build_prompt(character, list(history), message, tokenizer=backend.tokenizer, budget=1536)


async def test_candidates_are_rows_of_one_batch_and_the_best_scored_one_wins(cast_backend, engine):
    registry, backend = cast_backend
    goku = registry.get("goku")
    message = user_turn("What do you like to eat?")
    prompt = prompt_for(backend, goku, message)
    responder = responder_for(backend, registry, candidates=4, **SAMPLED)
    before = backend.batcher.batches_run
    reply = await responder.respond(goku, prompt, message, [])
    assert reply.guard_action == ""  # (a resample would be a second batch)
    assert backend.batcher.batches_run == before + 1  # four candidates, one batch
    scores = [c.score for c in reply.candidates if not c.broken]
    assert len(reply.candidates) == 4 and all(s is not None for s in scores)
    best = max((c for c in reply.candidates if not c.broken), key=lambda c: c.score)
    assert reply.text == best.text
    assert not responder.streams


async def test_a_candidate_breaking_a_guard_is_never_chosen(engine, tmp_path):
    """The best-scored candidate of a seeded run is forbidden by a guard: the same seeded run
    then posts another candidate, one that passes."""
    engine.seed = 7
    batcher = Batcher(engine, max_batch_size=8, max_wait_ms=20)
    backend = EmbeddedBackend(engine, batcher, tmp_path)
    try:
        message = user_turn("Tell me about your day.")

        async def run(pattern):
            # The prompt shows the rule, not its guard: both runs see the same prompt.
            rule = {"rule": "Never says that.", "guard": {"never_say": [pattern]}}
            write_character(tmp_path, rules=[rule])
            cast = CharacterRegistry.load(tmp_path)
            tess = cast.get("tester")
            responder = responder_for(backend, cast, candidates=4, **SAMPLED)
            return await responder.respond(tess, prompt_for(backend, tess, message), message, [])

        free = await run("never matches: qqqzzz")
        assert len({c.text for c in free.candidates}) > 1  # sampling gave different replies
        guarded = await run(re.escape(free.text))
        assert [c.text for c in guarded.candidates] == [c.text for c in free.candidates]
        assert guarded.text != free.text
        assert guarded.text in {c.text for c in guarded.candidates if not c.broken}
    finally:
        engine.seed = None
        await batcher.close()


async def test_when_every_candidate_breaks_a_guard_it_resamples_then_falls_back(engine, tmp_path):
    silent = {"rule": "Never speaks.", "guard": {"never_say": [r"\w"]}}
    write_character(tmp_path, rules=[silent], fallback_lines=["..."])
    cast = CharacterRegistry.load(tmp_path)
    tess = cast.get("tester")
    batcher = Batcher(engine, max_batch_size=8, max_wait_ms=20)
    backend = EmbeddedBackend(engine, batcher, tmp_path)
    try:
        responder = responder_for(backend, cast, candidates=3, **SAMPLED)
        message = user_turn("Hello?")
        reply = await responder.respond(tess, prompt_for(backend, tess, message), message, [])
    finally:
        await batcher.close()
    assert reply.guard_action == "fallback" and reply.text == "..."
    assert len(reply.broken) >= 6  # three candidates, twice
    assert batcher.batches_run == 2  # the first candidates and the resample


async def test_guided_candidates_use_the_bare_conversation(cast_backend):
    registry, backend = cast_backend
    goku = registry.get("goku")
    message = user_turn("Can you go Super Saiyan 4?")
    prompt = prompt_for(backend, goku, message)
    bare = bare_prompt(prompt, backend.tokenizer)
    assert "You are Goku" in prompt.text and "You are Goku" not in bare
    assert "Super Saiyan 4" in bare
    responder = responder_for(backend, registry, persona_guidance=1.5, temperature=0.0)
    reply = await responder.respond(goku, prompt, message, [])
    assert reply.text.strip()

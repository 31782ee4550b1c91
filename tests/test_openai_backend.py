"""backend.mode openai: replies through an OpenAI-compatible server. vLLM needs a GPU, so a
loopback server shaped like vLLM's (tests/openai_server.py) stands in for it, backed by the real
embedded engine; real Redis and FakeDiscord for the bot-level test."""

from __future__ import annotations

import itertools
import shutil
import socket
import time

import pytest

from bot.config import BackendConfig, Config, OpenAIBackendConfig
from bot.engine.loading import resolve_base_model
from bot.generation import BackendUnavailable, GenerationRequest, SamplingSettings
from bot.generation.openai_backend import (
    NO_BASE_MODEL,
    UNREACHABLE,
    OpenAIBackend,
    server_label,
    server_message,
)
from tests.bot_fixtures import BotRunner, summon
from tests.openai_server import BASE_MODEL, OpenAIServer

GREEDY = SamplingSettings(max_new_tokens=8, temperature=0.0, top_p=1.0, repetition_penalty=1.1)
SHORT = SamplingSettings(max_new_tokens=2, temperature=0.0, top_p=1.0, repetition_penalty=1.0)


def with_openai(config: Config, **settings) -> Config:
    """`config` with backend.mode openai and these backend.openai settings."""
    backend = BackendConfig(mode="openai", openai=OpenAIBackendConfig(**settings))
    return config.model_copy(update={"backend": backend})


def chat_prompt(tokenizer, text: str) -> str:
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def closed_port_url() -> str:
    """A loopback address nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def adapters_root(tmp_path, random_adapters):
    """Adapter folders as the server sees them: <root>/<character id>."""
    root = tmp_path / "served"
    for name, path in random_adapters.items():
        shutil.copytree(path, root / name)
    return root


@pytest.fixture
async def server(clean_engine, adapters_root):
    """vLLM as if started with `--lora-modules alpha=... beta=...`."""
    loras = {name: adapters_root / name for name in ("alpha", "beta")}
    server = await OpenAIServer(clean_engine, lora_modules=loras).start()
    yield server
    await server.close()


@pytest.fixture
async def make_backend(config, tokenizer):
    backends: list[OpenAIBackend] = []

    def make(server_url: str, **settings) -> OpenAIBackend:
        settings = {"base_url": server_url, "timeout": 10.0} | settings
        backend = OpenAIBackend(with_openai(config, **settings), tokenizer)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        await backend.close()


# -- helpers without a server ------------------------------------------------------------------


def test_server_label_hides_credentials_and_paths():
    assert server_label("http://user:secret@vllm.internal:8000/v1?key=x") == "vllm.internal:8000"
    assert server_label("https://api.example.com/v1") == "api.example.com"
    assert server_label("http://[::1]:8080/v1") == "[::1]:8080"


def test_server_message_reads_every_error_shape():
    assert server_message({"message": "The model `x` does not exist."}) == (
        "The model `x` does not exist."
    )
    assert server_message({"error": {"message": "nested"}}) == "nested"
    assert server_message({"detail": "Not Found"}) == "Not Found"  # FastAPI
    assert server_message("404 page not found\n") == "404 page not found"  # Ollama
    assert server_message(None) == ""
    assert len(server_message("x" * 1000)) == 300


async def test_unreachable_server_is_a_clear_notice_and_a_status_problem(make_backend):
    url = closed_port_url().replace("http://", "http://user:hunter2@")
    backend = make_backend(url, default_model=BASE_MODEL, api_key="sk-test-secret")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await backend.generate(GenerationRequest("Hi", SHORT, adapter="goku"))
    assert str(caught.value) == UNREACHABLE
    assert time.monotonic() - started < 5  # one retry, then the notice
    status = await backend.status()
    assert status.mode == "openai" and status.problem.startswith("model server unreachable: 127.")
    assert status.adapters == [] and status.queue_depth == 0 and status.batches_run == 0
    [outcome] = await backend.reload_adapter("goku")
    assert not outcome.ok and "unreachable" in outcome.detail
    shown = [status.problem, status.model, outcome.where, outcome.detail]
    assert not any("hunter2" in text or "sk-test" in text for text in shown)


async def test_bare_base_model_needs_default_model(make_backend):
    backend = make_backend(closed_port_url())
    with pytest.raises(BackendUnavailable, match="default_model") as caught:
        await backend.generate(GenerationRequest("Hi", SHORT, adapter=None))
    assert str(caught.value) == NO_BASE_MODEL


async def test_runtime_lora_off_refuses_reload_without_asking_the_server(make_backend):
    backend = make_backend(closed_port_url(), runtime_lora=False)
    [outcome] = await backend.reload_adapter("goku")
    assert not outcome.ok and outcome.where.startswith("model server 127.0.0.1:")
    assert "cannot load adapters at runtime" in outcome.detail
    assert "runtime_lora is off" in outcome.detail
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in outcome.detail
    assert "--lora-modules goku=" in outcome.detail


# -- generation --------------------------------------------------------------------------------


async def test_greedy_text_equals_the_engine_and_streams(server, make_backend, clean_engine):
    backend = make_backend(server.base_url, models={"alpha": "alpha"}, default_model=BASE_MODEL)
    prompt = chat_prompt(clean_engine.tokenizer, "Who are you?")
    for adapter in ("alpha", None):
        seen: list[str] = []
        request = GenerationRequest(prompt, GREEDY, adapter=adapter, on_text=seen.append)
        result = await backend.generate(request)
        [expected] = clean_engine.generate([GenerationRequest(prompt, GREEDY, adapter=adapter)])
        assert result == expected, adapter
        assert len(seen) > 1 and seen[-1] == result.text  # the text so far, growing
        assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(seen))
    assert [body["model"] for body in server.completions] == ["alpha", BASE_MODEL]
    body = server.completions[0]
    assert body["stream"] is True and body["max_tokens"] == 8 and body["temperature"] == 0
    assert body["repetition_penalty"] == 1.1 and body["add_special_tokens"] is False
    assert backend.answered == 2 and backend.in_flight == 0


async def test_model_name_per_character_reaches_the_server(server, make_backend):
    backend = make_backend(server.base_url, models={"goku": "alpha"})
    await backend.generate(GenerationRequest("Hi", SHORT, adapter="goku"))  # mapped
    await backend.generate(GenerationRequest("Hi", SHORT, adapter="beta"))  # its own id
    assert [body["model"] for body in server.completions] == ["alpha", "beta"]
    with pytest.raises(BackendUnavailable) as caught:
        await backend.generate(GenerationRequest("Hi", SHORT, adapter="vegeta"))
    message = str(caught.value)
    assert "no model named 'vegeta'" in message and "backend.openai.models" in message
    assert "--lora-modules vegeta=" in message

    # The server's non-streaming answer, through the official client.
    answer = await backend.client.completions.create(model="beta", prompt="Hi", max_tokens=2)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 2

    # default_model serves every character not mapped
    backend = make_backend(server.base_url, models={"goku": "alpha"}, default_model=BASE_MODEL)
    await backend.generate(GenerationRequest("Hi", SHORT, adapter="vegeta"))
    assert server.completions[-1]["model"] == BASE_MODEL


async def test_server_errors_become_notices(server, make_backend):
    backend = make_backend(server.base_url)
    server.fail_next(1, 500)  # one retry gets past a single failure
    result = await backend.generate(GenerationRequest("Hi", SHORT, adapter="alpha"))
    assert result.new_tokens == 2 and result.hit_token_limit
    server.fail_next(2, 503)
    with pytest.raises(BackendUnavailable, match=r"failed to answer \(HTTP 503\)"):
        await backend.generate(GenerationRequest("Hi", SHORT, adapter="alpha"))
    server.fail_next(1, 401)
    with pytest.raises(BackendUnavailable, match="OPENAI_API_KEY"):
        await backend.generate(GenerationRequest("Hi", SHORT, adapter="alpha"))
    assert backend.in_flight == 0


async def test_hanging_server_times_out_within_the_timeout(server, make_backend):
    backend = make_backend(server.base_url, timeout=1.0)
    server.hang_next(1)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"within 1 s"):
        await backend.generate(GenerationRequest("Hi", SHORT, adapter="alpha"))
    assert time.monotonic() - started < 2
    # /status answers within a second although the server hangs
    server.hang_next(1)
    started = time.monotonic()
    status = await backend.status()
    assert time.monotonic() - started < 1.5  # bounded at 0.9 s; the rest is slack for CI
    assert "did not answer within 0.8 s" in status.problem
    assert backend.in_flight == 0


async def test_status_lists_the_server_models_and_served_characters(server, make_backend):
    backend = make_backend(server.base_url, models={"goku": "alpha", "naruto": "missing"})
    await backend.generate(GenerationRequest("Hi", SHORT, adapter="goku"))
    status = await backend.status()
    assert status.problem is None
    assert status.model == f"{server_label(server.base_url)} ({BASE_MODEL}, alpha, beta)"
    assert status.device == "remote" and status.quantization == "(server)"
    assert status.adapters == ["goku"]  # naruto's model is not served, eren (its id) neither
    assert status.batches_run == 1 and status.queue_depth == 0 and status.adapter_failures == {}


# -- /reload-adapter ---------------------------------------------------------------------------


async def test_reload_swaps_the_adapter_live(server, make_backend, adapters_root, clean_engine):
    backend = make_backend(server.base_url, adapter_path=str(adapters_root / "{id}"))
    prompt = chat_prompt(clean_engine.tokenizer, "Who are you?")
    alpha = await backend.generate(GenerationRequest(prompt, GREEDY, adapter="alpha"))
    beta = await backend.generate(GenerationRequest(prompt, GREEDY, adapter="beta"))
    assert alpha.text != beta.text

    # alpha's folder now holds beta's weights (a newly trained adapter)
    shutil.rmtree(adapters_root / "alpha")
    shutil.copytree(adapters_root / "beta", adapters_root / "alpha")
    [outcome] = await backend.reload_adapter("alpha")
    assert outcome.ok and outcome.detail == str(adapters_root / "alpha")
    assert outcome.where == f"model server {server_label(server.base_url)}"
    reloaded = await backend.generate(GenerationRequest(prompt, GREEDY, adapter="alpha"))
    assert reloaded.text == beta.text
    assert sorted(server.loras) == ["alpha", "beta"]  # the scratch name is gone
    loads = [r for r in server.requests if r.endswith("_lora_adapter")]
    assert loads == [
        "POST /v1/load_lora_adapter",  # under a scratch name: is the new adapter sound?
        "POST /v1/unload_lora_adapter",
        "POST /v1/load_lora_adapter",
        "POST /v1/unload_lora_adapter",  # the scratch name
    ]

    # A name the server does not serve yet is simply loaded.
    shutil.copytree(adapters_root / "beta", adapters_root / "gamma")
    [outcome] = await backend.reload_adapter("gamma")
    assert outcome.ok and "gamma" in server.loras


async def test_broken_adapter_refused_and_old_keeps_serving(
    server, make_backend, adapters_root, clean_engine
):
    backend = make_backend(server.base_url, adapter_path=str(adapters_root / "{id}"))
    prompt = chat_prompt(clean_engine.tokenizer, "Who are you?")
    before = await backend.generate(GenerationRequest(prompt, GREEDY, adapter="alpha"))
    (adapters_root / "alpha" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    [outcome] = await backend.reload_adapter("alpha")
    assert not outcome.ok
    assert "refused it (HTTP 500" in outcome.detail and "cannot load adapter" in outcome.detail
    assert outcome.detail.endswith("the previous adapter keeps serving")
    after = await backend.generate(GenerationRequest(prompt, GREEDY, adapter="alpha"))
    assert after.text == before.text
    assert sorted(server.loras) == ["alpha", "beta"]

    # No folder at all: vLLM's 404 is about the adapter, not a missing endpoint.
    [outcome] = await backend.reload_adapter("delta")
    assert not outcome.ok and "No adapter found for" in outcome.detail
    assert "nothing is loaded under 'delta'" in outcome.detail


async def test_server_without_lora_endpoints_cannot_reload(clean_engine, make_backend):
    server = await OpenAIServer(clean_engine, lora_endpoints=False).start()  # llama.cpp-like
    try:
        backend = make_backend(server.base_url)
        [outcome] = await backend.reload_adapter("goku")
    finally:
        await server.close()
    assert not outcome.ok
    assert "cannot load adapters at runtime" in outcome.detail and "HTTP 404" in outcome.detail
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in outcome.detail


# -- the bot -----------------------------------------------------------------------------------


@pytest.fixture
async def openai_runner(config, bot_config, server, key_prefix):
    # The tokenizer comes from the session's converted model: bot_config's fresh data dir
    # would convert the embedded model again (20 s).
    model = bot_config.model.model_copy(update={"base": resolve_base_model(config)})
    config = with_openai(bot_config, base_url=server.base_url, models={"goku": "alpha"})
    generation = config.generation.model_copy(update={"max_new_tokens": 8})  # cheap replies
    config = config.model_copy(update={"model": model, "generation": generation})
    runner = BotRunner(config, None, key_prefix)  # openai mode: the bot loads no weights
    yield runner
    for bot in list(runner.bots):
        await runner.stop(bot)


async def test_bot_answers_through_the_server_and_says_when_it_is_down(openai_runner, server, fake):
    bot = await openai_runner.start(fake)
    assert bot.services.backend.mode == "openai"
    await summon(fake)
    await fake.send_message("What do you like to eat?", mentions_bot=True)
    _greeting, answer = fake.channel_messages(fake.channel_id)
    assert answer["username"] == "Goku" and answer["content"].strip()
    assert server.completions[-1]["model"] == "alpha"

    await server.close()
    await fake.send_message("Still there?", mentions_bot=True)
    notice = fake.channel_messages(fake.channel_id)[-1]
    assert notice["via"] == "http" and notice["content"] == UNREACHABLE
    turns = await bot.services.history.recent(fake.channel_id)
    assert [t.role for t in turns] == ["character", "user", "character"]  # nothing remembered

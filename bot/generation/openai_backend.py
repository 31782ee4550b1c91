"""The openai backend: replies from any OpenAI-compatible server (vLLM, llama.cpp's server,
Ollama) through the official `openai` client.

The prompt is still built in the bot (card, history, budget, chat template) and goes out as a
plain completion prompt (`/v1/completions`, not chat), so the server sees exactly what the
embedded model would. A character is a model name on the server: `backend.openai.models[id]`,
else `default_model`, else the character id itself (a vLLM LoRA name, as in
`vllm serve ... --enable-lora --lora-modules goku=characters/goku/adapter`).

/reload-adapter uses vLLM's runtime LoRA endpoints (`POST /v1/load_lora_adapter` and
`/v1/unload_lora_adapter`, there when vLLM runs with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True;
docs.vllm.ai, features/lora, "Dynamically serving LoRA Adapters"). vLLM refuses to load a name
that is loaded already, and the docs offer only unload and load, so a reload loads the new
adapter under a scratch name first (a broken one is refused while the old one keeps serving),
then unloads and loads the real name, and drops the scratch one. vLLM's newer `load_inplace`
flag is not used: it makes vLLM re-read the adapter from disk on every step afterwards
(vllm-project/vllm#33791, unfixed when this was written).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any
from urllib.parse import urlsplit

from openai import (
    NOT_GIVEN,
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncOpenAI,
)

from bot.characters import CHARACTER_FILE
from bot.config import Config
from bot.generation.backend import (
    BackendStatus,
    BackendUnavailable,
    ReloadOutcome,
    scoring_unavailable,
)
from bot.generation.request import (
    GenerationRequest,
    GenerationResult,
    ScoreRequest,
    TextScore,
)

log = logging.getLogger(__name__)

STATUS_TIMEOUT = 0.8  # seconds for GET /models in /status, which must answer within ~1 s
RELOAD_TIMEOUT = 60.0  # seconds for a whole reload (a big adapter takes a while to read)
GENERATE_RETRIES = 1  # one more try after a dropped connection or a 5xx, within the timeout
MESSAGE_LIMIT = 300  # characters of a server's error message passed on
LISTED_LIMIT = 10  # model names shown in /status

# What a server member sees (as is) when a reply cannot be had.
UNREACHABLE = (
    "I can't reach the model server right now, so nobody can answer. It usually comes back by "
    "itself; try again in a minute."
)
TIMED_OUT = (
    "The model server did not finish this reply within {seconds:g} s (it may be overloaded). "
    "Please try again in a moment."
)
SERVER_ERROR = (
    "The model server failed to answer (HTTP {status}). Please try again in a moment; if it "
    "keeps happening, an admin should look at the model server's log."
)
BUSY = "The model server is too busy right now (HTTP 429). Please try again in a moment."
UNKNOWN_MODEL = (
    "The model server has no model named '{model}', which {who} needs. (Admins: load it on the "
    "server, e.g. vLLM `--lora-modules {model}=<adapter folder>`, or map the character to a "
    "served model in backend.openai.models.)"
)
NO_BASE_MODEL = (
    "No base model is configured for replies without a character. (Admins: set "
    "backend.openai.default_model to the model server's name for its base model.)"
)
KEY_REFUSED = (
    "The model server refused the bot's credentials (HTTP {status}). (Admins: check "
    "backend.openai.api_key / OPENAI_API_KEY.)"
)
WRONG_ADDRESS = (
    "The model server has no completion endpoint at the configured address (HTTP 404). "
    "(Admins: backend.openai.base_url usually ends in /v1.)"
)
REFUSED = "The model server refused this request (HTTP {status}: {message})."
BROKE_OFF = "The model server failed in the middle of this reply ({message}). Please try again."

# What an admin sees after /reload-adapter when the server cannot load adapters live.
NO_RUNTIME_LORA = (
    "this model server cannot load adapters at runtime ({why}). Restart it with the new "
    "adapter (vLLM: `--lora-modules {model}={path}`). To reload live, start vLLM with "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and set backend.openai.runtime_lora: true"
)


def server_label(base_url: str) -> str:
    """host:port of the server, for messages and logs: never credentials, paths or queries."""
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def server_message(body: object) -> str:
    """The message in a server's error body: vLLM's {"error": {"message"}} (the client passes
    the inner object) or its older {"message"}, FastAPI's {"detail"}, or plain text."""
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                return server_message(value)
            if isinstance(value, str) and value.strip():
                return shorten(value)
        return ""
    if isinstance(body, str | bytes):
        text = body.decode(errors="replace") if isinstance(body, bytes) else body
        return shorten(text)
    return ""


def shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


class _LoadRefused(Exception):
    """The server answered a LoRA request with an error; the message is the server's."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _NoRuntimeLora(Exception):
    """The server has no LoRA endpoints (llama.cpp, Ollama, vLLM without runtime updating)."""


class OpenAIBackend:
    mode = "openai"

    def __init__(self, config: Config, tokenizer: Any) -> None:
        self.settings = config.backend.openai
        self.characters_path = config.characters_path
        self.tokenizer = tokenizer
        self.server = server_label(self.settings.base_url)
        self.api_path = urlsplit(self.settings.base_url).path.rstrip("/")  # e.g. /v1
        key = self.settings.api_key
        self.client = AsyncOpenAI(
            base_url=self.settings.base_url,
            # The client insists on a key; local servers ignore it ("EMPTY" is vLLM's example).
            api_key=key.get_secret_value() if key else "EMPTY",
            timeout=self.settings.timeout,
            max_retries=GENERATE_RETRIES,
        )
        self.in_flight = 0
        self.answered = 0
        self._reloading: set[str] = set()  # model names with a reload running
        self._swapping: dict[str, asyncio.Event] = {}  # set when the name is served again

    # -- model names ----------------------------------------------------------------------

    def model_for(self, character_id: str | None) -> str:
        """The server's model name for a character (None: the bare base model)."""
        if character_id is None:
            if self.settings.default_model is None:
                raise BackendUnavailable(NO_BASE_MODEL)
            return self.settings.default_model
        return self.settings.models.get(character_id) or self.settings.default_model or character_id

    def character_ids(self) -> list[str]:
        """Characters this bot knows: the configured mapping and the character folders."""
        ids = set(self.settings.models)
        with contextlib.suppress(OSError):  # a missing folder is reported at start-up
            ids |= {p.name for p in self.characters_path.iterdir() if (p / CHARACTER_FILE).exists()}
        return sorted(ids)

    # -- generation -----------------------------------------------------------------------

    async def score(self, requests: list[ScoreRequest]) -> list[TextScore]:
        raise scoring_unavailable(self.mode)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        model = self.model_for(request.adapter)
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.settings.timeout):
                swap = self._swapping.get(model)
                if swap is not None:  # a reload has the name unloaded for a moment
                    await swap.wait()
                result = await self._complete(model, request)
        except TimeoutError:
            log.warning("Model server %s: no full reply from %r in time", self.server, model)
            raise BackendUnavailable(TIMED_OUT.format(seconds=self.settings.timeout)) from None
        except APIError as exc:
            log.warning("Model server %s, model %r: %s", self.server, model, describe(exc))
            raise BackendUnavailable(self._user_message(exc, model, request.adapter)) from None
        finally:
            self.in_flight -= 1
        self.answered += 1
        return result

    async def _complete(self, model: str, request: GenerationRequest) -> GenerationResult:
        settings = request.settings
        stream = await self.client.completions.create(
            model=model,
            prompt=request.prompt,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,  # 0 = greedy, for vLLM as for the engine
            top_p=settings.top_p,
            # A request's own seed (another answer); vLLM, llama.cpp and Ollama take one.
            seed=settings.seed if settings.seed is not None else NOT_GIVEN,
            # vLLM's extra sampling parameters (not in OpenAI's API). The chat template wrote
            # the special tokens already, as for the embedded engine.
            extra_body={
                "repetition_penalty": settings.repetition_penalty,
                "add_special_tokens": False,
            },
        )
        text = ""
        finish: str | None = None
        completion_tokens: int | None = None
        async with stream:  # the connection is closed however this block ends
            async for chunk in stream:
                if chunk.usage is not None:
                    completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:  # n = 1: one choice per chunk at most
                    if choice.text:
                        text += choice.text
                        if request.on_text is not None:
                            request.on_text(text)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        if completion_tokens is None:  # a server that sends no usage
            completion_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return GenerationResult(text, completion_tokens, hit_token_limit=finish == "length")

    def _user_message(self, exc: APIError, model: str, character_id: str | None) -> str:
        if isinstance(exc, APITimeoutError):
            return TIMED_OUT.format(seconds=self.settings.timeout)
        if isinstance(exc, APIConnectionError):
            return UNREACHABLE
        if not isinstance(exc, APIStatusError):  # an error event in the middle of the stream
            return BROKE_OFF.format(message=shorten(exc.message))
        status = exc.status_code
        message = server_message(exc.body)
        if status in (401, 403):
            return KEY_REFUSED.format(status=status)
        if status == 404:
            # vLLM: "The model `goku` does not exist."; Ollama: 'model "goku" not found'. Any
            # other 404 is a wrong path in base_url.
            if model in message or "model" in message.lower():
                who = f"character '{character_id}'" if character_id else "the base model"
                return UNKNOWN_MODEL.format(model=model, who=who)
            return WRONG_ADDRESS
        if status == 429:
            return BUSY
        if status >= 500:
            return SERVER_ERROR.format(status=status)
        return REFUSED.format(status=status, message=message or "no message")

    # -- adapters -------------------------------------------------------------------------

    async def reload_adapter(self, character_id: str) -> list[ReloadOutcome]:
        model = self.model_for(character_id)
        path = self.settings.adapter_path.format(id=character_id)
        if not self.settings.runtime_lora:
            why = "backend.openai.runtime_lora is off"
            return [self._outcome(False, NO_RUNTIME_LORA.format(why=why, model=model, path=path))]
        if model in self._reloading:
            return [self._outcome(False, f"a reload of '{model}' is running already; wait for it")]
        self._reloading.add(model)
        try:
            async with asyncio.timeout(RELOAD_TIMEOUT):
                return [await self._reload(model, path)]
        except (TimeoutError, APITimeoutError):
            detail = f"the model server did not finish within {RELOAD_TIMEOUT:g} s"
        except APIConnectionError:
            detail = f"the model server at {self.server} is unreachable"
        except APIStatusError as exc:
            message = server_message(exc.body) or "no message"
            detail = f"listing the server's models failed (HTTP {exc.status_code}: {message})"
        finally:
            self._reloading.discard(model)
        # Mid-swap, the name may be unloaded: /status lists the adapters the server has.
        detail += f"; /status shows whether '{model}' is still served"
        log.warning("Reload of %r on %s failed: %s", model, self.server, detail)
        return [self._outcome(False, detail)]

    async def _reload(self, model: str, path: str) -> ReloadOutcome:
        listed = await self._listed_models(RELOAD_TIMEOUT)
        if model == self.settings.default_model or (listed and model == listed[0]):
            # vLLM lists its base model first; loading a LoRA under that name would shadow it.
            return self._outcome(
                False,
                f"'{model}' is the server's base model, not an adapter; map the character to "
                "its LoRA name in backend.openai.models",
            )
        try:
            if model in listed:
                return await self._replace(model, path)
            try:
                await self._load(model, path)  # a first load: nothing to keep serving
            except _LoadRefused as exc:
                return self._refused(
                    model, f"{exc}; nothing is loaded under '{model}' on the server"
                )
        except _NoRuntimeLora as exc:
            why = f"POST {self.api_path}/load_lora_adapter answered {exc}: no such endpoint"
            return self._outcome(False, NO_RUNTIME_LORA.format(why=why, model=model, path=path))
        log.info("Adapter %r loaded on %s from %s", model, self.server, path)
        return self._outcome(True, path)

    async def _replace(self, model: str, path: str) -> ReloadOutcome:
        """Replace a loaded adapter: vLLM refuses to load a name twice, so the new one is first
        loaded under a scratch name, which refuses a broken adapter while the old one serves."""
        scratch = f"{model}--reload-{uuid.uuid4().hex[:8]}"
        try:
            await self._load(scratch, path)
        except _LoadRefused as exc:
            return self._refused(model, f"{exc}; the previous adapter keeps serving")
        try:
            return await self._swap(model, path)
        finally:
            try:
                await self._post("unload_lora_adapter", {"lora_name": scratch})
            except (APIError, _LoadRefused, _NoRuntimeLora) as exc:
                log.warning("Scratch adapter %r left on %s: %s", scratch, self.server, exc)

    async def _swap(self, model: str, path: str) -> ReloadOutcome:
        """Unload the name and load it again; replies for it wait meanwhile (a moment)."""
        served = asyncio.Event()
        self._swapping[model] = served
        try:
            try:
                await self._post("unload_lora_adapter", {"lora_name": model})
            except _LoadRefused as exc:
                if exc.status != 404:  # 404: not loaded any more, which is fine
                    detail = f"unloading the old adapter failed: {exc}; it keeps serving"
                    return self._refused(model, detail)
            try:
                await self._load(model, path)
            except _LoadRefused as exc:  # it loaded under the scratch name a moment ago
                detail = f"{exc}; '{model}' is not loaded on the server now: reload it again"
                return self._refused(model, detail)
        finally:
            self._swapping.pop(model, None)
            served.set()
        log.info("Adapter %r reloaded on %s from %s", model, self.server, path)
        return self._outcome(True, path)

    def _refused(self, model: str, detail: str) -> ReloadOutcome:
        log.warning("Reload of %r on %s refused: %s", model, self.server, detail)
        return self._outcome(False, detail)

    async def _load(self, name: str, path: str) -> None:
        await self._post("load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def _post(self, endpoint: str, body: dict[str, str]) -> str:
        """POST to a vLLM LoRA endpoint; its success answer is plain text."""
        try:
            return await self.client.post(
                f"/{endpoint}",
                cast_to=str,
                body=body,
                options={"max_retries": 0, "timeout": RELOAD_TIMEOUT},
            )
        except APIStatusError as exc:
            message = server_message(exc.body)
            # vLLM's own 404s (adapter folder or name not found) talk about the LoRA; a
            # missing route does not (FastAPI "Not Found", llama.cpp, Ollama).
            if exc.status_code in (404, 405) and "lora" not in message.lower():
                raise _NoRuntimeLora(f"HTTP {exc.status_code}") from None
            raise _LoadRefused(
                f"the model server refused it (HTTP {exc.status_code}: {message or 'no message'})",
                exc.status_code,
            ) from None

    async def _listed_models(self, timeout: float) -> list[str]:
        """The model names GET /models lists (vLLM: the base model first, then the LoRAs)."""
        client = self.client.with_options(timeout=timeout, max_retries=0)
        page = await client.models.list()
        return [model.id for model in page.data]

    def _outcome(self, ok: bool, detail: str) -> ReloadOutcome:
        return ReloadOutcome(f"model server {self.server}", ok, detail)

    # -- status ---------------------------------------------------------------------------

    async def status(self) -> BackendStatus:
        listed: list[str] = []
        problem = None
        try:
            # Twice bounded: the client's timeout, and this one in case a server trickles.
            async with asyncio.timeout(STATUS_TIMEOUT + 0.1):
                listed = await self._listed_models(STATUS_TIMEOUT)
        except (TimeoutError, APITimeoutError):
            problem = f"model server {self.server} did not answer within {STATUS_TIMEOUT:g} s"
        except APIConnectionError:
            problem = f"model server unreachable: {self.server} refused or dropped the connection"
        except APIStatusError as exc:
            message = server_message(exc.body)
            problem = f"model server {self.server} answered HTTP {exc.status_code}" + (
                f" ({message})" if message else ""
            )
        served = set(listed)
        adapters = [
            cid
            for cid in self.character_ids()
            if (name := self.model_for(cid)) in served and name != self.settings.default_model
        ]
        shown = ", ".join(listed[:LISTED_LIMIT])
        if len(listed) > LISTED_LIMIT:
            shown += f" and {len(listed) - LISTED_LIMIT} more"
        return BackendStatus(
            mode=self.mode,
            model=f"{self.server} ({shown})" if shown else self.server,
            device="remote",
            quantization="(server)",
            adapters=adapters,
            adapter_failures={},
            queue_depth=self.in_flight,
            batches_run=self.answered,
            problem=problem,
        )

    async def close(self) -> None:
        await self.client.close()


def describe(exc: APIError) -> str:
    """One line for the log: the kind of failure and the server's message (no URLs, no key)."""
    if isinstance(exc, APIStatusError):
        return f"HTTP {exc.status_code}: {server_message(exc.body) or 'no message'}"
    if isinstance(exc, APITimeoutError):
        return "timed out"
    if isinstance(exc, APIConnectionError):
        cause = exc.__cause__
        return f"connection failed ({type(cause).__name__ if cause else 'no detail'})"
    return shorten(exc.message)

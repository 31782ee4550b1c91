"""A loopback OpenAI-compatible server for the tests, shaped like vLLM's, backed by the real
engine (vLLM itself needs a GPU).

What it implements, as vLLM does (vllm/entrypoints/openai and serve/lora, docs/features/lora):
- `POST /v1/completions`: a string prompt, `max_tokens` (default 16), `temperature`, `top_p`,
  and the extra `repetition_penalty`; `stream: true` sends Server-Sent Events, one
  `text_completion` chunk per piece of text, `finish_reason` "stop" or "length" on the last
  choice, a usage chunk with empty choices when `stream_options.include_usage` is set, then
  `data: [DONE]`. An unknown model is a 404 `NotFoundError` ("The model `x` does not exist.").
- `GET /v1/models`: the base model first, then every LoRA (`parent` = the base model).
- `POST /v1/load_lora_adapter` {lora_name, lora_path}: 200 with the plain text "Success: LoRA
  adapter 'x' added successfully."; a name loaded already is a 400 (unless `load_inplace`), a
  missing folder a 404 "Loading lora x failed: No adapter found for <path>", an adapter that
  does not load a 500 with the cause. `POST /v1/unload_lora_adapter` {lora_name}: 200, or 404
  "The lora adapter 'x' cannot be found.".
Errors are JSON `{"error": {"message", "type", "param", "code"}}` with that status.

A LoRA name is an adapter of the engine under the same id, "." and other characters peft refuses
in adapter names replaced by "_" (use `clean_engine`, so the test's adapters are unloaded
afterwards). Faults: `fail_next(n, status)` (the next n
requests get that status), `hang_next(n)` (the next n requests never answer, until close), and
`lora_endpoints=False` (no LoRA routes: a plain 404, like llama.cpp's server and Ollama).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.engine import AdapterError, Batcher, InferenceEngine
from bot.generation import GenerationRequest, SamplingSettings

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def engine_id(lora_name: str) -> str:
    """The engine's adapter id for a LoRA name (vLLM takes any string, peft does not)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", lora_name)


def error(status: int, message: str, kind: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


class OpenAIServer:
    def __init__(
        self,
        engine: InferenceEngine,
        *,
        lora_modules: dict[str, Path] | None = None,
        lora_endpoints: bool = True,
    ) -> None:
        self.engine = engine
        self.initial_loras = dict(lora_modules or {})
        self.lora_endpoints = lora_endpoints
        self.loras: dict[str, str] = {}  # LoRA name -> path it was loaded from
        self.requests: list[str] = []  # "METHOD /path" of every request, faults included
        self.completions: list[dict[str, Any]] = []  # completion bodies, for the tests to inspect
        self.port = 0
        self._faults: list[int | str] = []  # an HTTP status, or "hang"
        self._closing = asyncio.Event()
        self._batcher = Batcher(engine, max_batch_size=8, max_wait_ms=5)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(self, count: int, status: int = 500) -> None:
        self._faults += [status] * count

    def hang_next(self, count: int) -> None:
        self._faults += ["hang"] * count

    async def start(self) -> OpenAIServer:
        await self._batcher.start()
        for name, path in self.initial_loras.items():  # like --lora-modules name=path
            await self._batcher.run(self.engine.load_adapter, engine_id(name), path)
            self.loras[name] = str(path)
        app = web.Application(middlewares=[self._inject_faults])
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_get("/v1/models", self.models)
        if self.lora_endpoints:
            app.router.add_post("/v1/load_lora_adapter", self.load_lora_adapter)
            app.router.add_post("/v1/unload_lora_adapter", self.unload_lora_adapter)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # a free port
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        """Stop answering (hanging requests end) and stop the batcher; idempotent."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._batcher.close()

    @web.middleware
    async def _inject_faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if self._faults:
            fault = self._faults.pop(0)
            if fault == "hang":
                await self._closing.wait()
                return error(503, "server shutting down", "ServiceUnavailable")
            return error(int(fault), "injected failure", "InternalServerError")
        return await handler(request)

    # -- models ---------------------------------------------------------------------------

    def _card(self, name: str, root: str, parent: str | None) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": 8192,
            "permission": [],
        }

    async def models(self, request: web.Request) -> web.Response:
        cards = [self._card(BASE_MODEL, BASE_MODEL, None)]
        cards += [self._card(name, path, BASE_MODEL) for name, path in self.loras.items()]
        return web.json_response({"object": "list", "data": cards})

    async def load_lora_adapter(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return error(
                400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput"
            )
        if name in self.loras and not body.get("load_inplace"):
            return error(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        if not Path(path).is_dir():
            return error(
                404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError"
            )
        try:
            await self._batcher.run(self.engine.load_adapter, engine_id(name), Path(path))
        except AdapterError as exc:
            return error(500, str(exc), "InternalServerError")
        self.loras[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora_adapter(self, request: web.Request) -> web.Response:
        name = (await request.json()).get("lora_name")
        if not name:
            return error(
                400,
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                "InvalidUserInput",
            )
        if name not in self.loras:
            return error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        await self._batcher.run(self.engine.unload_adapter, engine_id(name))
        del self.loras[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    # -- completions ----------------------------------------------------------------------

    async def complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.completions.append(body)
        model = body.get("model")
        if model != BASE_MODEL and model not in self.loras:
            return error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return error(
                400,
                "Either prompt or prompt_embeds must be provided and non-empty.",
                "BadRequestError",
            )
        settings = SamplingSettings(
            max_new_tokens=int(body.get("max_tokens") or 16),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            repetition_penalty=float(body.get("repetition_penalty") or 1.0),
        )
        adapter = None if model == BASE_MODEL else engine_id(model)
        prompt_tokens = len(self.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        if not body.get("stream"):
            result = await self._batcher.submit(GenerationRequest(prompt, settings, adapter))
            choice = {"index": 0, "text": result.text, "logprobs": None}
            choice["finish_reason"] = "length" if result.hit_token_limit else "stop"
            usage = self._usage(prompt_tokens, result.new_tokens)
            return web.json_response(meta | {"choices": [choice], "usage": usage})
        return await self._stream(request, body, meta, prompt, settings, adapter, prompt_tokens)

    @staticmethod
    def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        meta: dict[str, Any],
        prompt: str,
        settings: SamplingSettings,
        adapter: str | None,
        prompt_tokens: int,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def on_text(text: str) -> None:  # on the engine's thread
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        job = asyncio.ensure_future(
            self._batcher.submit(GenerationRequest(prompt, settings, adapter, on_text))
        )
        # After every on_text: those were queued on the loop before the result was set.
        job.add_done_callback(lambda _: pieces.put_nowait(None))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(data: dict[str, Any] | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {text}\n\n".encode())

        def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return meta | {"choices": [choice], "usage": None}

        sent = ""
        while (text := await pieces.get()) is not None:
            if text.startswith(sent) and len(text) > len(sent):
                await send(chunk(text[len(sent) :]))
                sent = text
        try:
            result = job.result()
        except Exception as exc:  # vLLM reports a failure mid-stream as an error event
            await send({"error": {"message": str(exc), "type": "InternalServerError", "code": 500}})
        else:
            rest = result.text[len(sent) :] if result.text.startswith(sent) else ""
            await send(chunk(rest, "length" if result.hit_token_limit else "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = self._usage(prompt_tokens, result.new_tokens)
                await send(meta | {"choices": [], "usage": usage})
        await send("[DONE]")
        await response.write_eof()
        return response

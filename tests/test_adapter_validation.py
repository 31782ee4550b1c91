"""Strict adapter validation on the real model: what peft would load only in part is refused.

Every broken adapter here is a real peft adapter folder (saved by peft, then damaged the way
real ones get damaged), loaded into the real embedded model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from bot.engine import AdapterError, GenerationRequest, InferenceEngine, SamplingSettings
from finetune.adapters import save_random_adapter
from tests.helpers import PROJECT_ROOT

GREEDY = SamplingSettings(max_new_tokens=8, temperature=0, top_p=1.0, repetition_penalty=1.0)
WEIGHTS = "adapter_model.safetensors"
KEPT_LAYERS = (".layers.0.", ".layers.1.")  # what the partial adapter keeps


def greedy(engine: InferenceEngine, adapter: str | None) -> str:
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], tokenize=False, add_generation_prompt=True
    )
    return engine.generate([GenerationRequest(prompt, GREEDY, adapter=adapter)])[0].text


def lora_names(engine: InferenceEngine) -> set[str]:
    """Every adapter name any LoRA layer of the model holds (half-loaded ones included)."""
    return {
        name
        for module in engine.model.modules()
        if isinstance(module, BaseTunerLayer)
        for name in module.lora_A
    }


def layers_in(weights: dict[str, torch.Tensor]) -> set[str]:
    return {key.rsplit(".lora_", 1)[0] for key in weights}


def copy_adapter(source: Path, target: Path, *, config: dict | None = None) -> Path:
    shutil.copytree(source, target)
    if config is not None:
        (target / "adapter_config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def broken(random_adapters, tmp_path_factory) -> dict[str, Path]:
    """Real peft adapters that cannot serve this model, one per way of being broken."""
    root = tmp_path_factory.mktemp("broken-adapters")
    good = random_adapters["alpha"]
    config = json.loads((good / "adapter_config.json").read_text())
    weights = load_file(good / WEIGHTS)

    # GPT-2 style module names (c_attn), saved by peft from a tiny random GPT-2: no download.
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    )
    lora = LoraConfig(target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    get_peft_model(gpt2, lora).save_pretrained(str(root / "gpt2"))

    # Same architecture and module names, hidden size 64 instead of 576.
    small = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=100,
        )
    )
    save_random_adapter(small, root / "small-base", seed=5)

    partial = copy_adapter(good, root / "partial")
    kept = {k: v for k, v in weights.items() if any(layer in k for layer in KEPT_LAYERS)}
    save_file(kept, partial / WEIGHTS)

    # The first q_proj's tensors renamed to a module this model does not have.
    renamed = copy_adapter(good, root / "renamed")
    save_file(
        {
            k.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.c_attn"): v
            for k, v in weights.items()
        },
        renamed / WEIGHTS,
    )

    no_weights = copy_adapter(good, root / "no-weights")
    (no_weights / WEIGHTS).unlink()

    corrupt = copy_adapter(good, root / "corrupt")
    (corrupt / WEIGHTS).write_bytes(b"this is not a safetensors file")

    return {
        "other-architecture": root / "gpt2",
        "other-hidden-size": root / "small-base",
        "rank-mismatch": copy_adapter(good, root / "r4", config=config | {"r": 4}),
        "partial": partial,
        "unknown-modules": renamed,
        "no-weights": no_weights,
        "corrupt": corrupt,
        # q_proj exists, but peft cannot put LoRA on a norm: it fails after injecting some layers.
        "unsupported-module": copy_adapter(
            good, root / "norm", config=config | {"target_modules": ["q_proj", "input_layernorm"]}
        ),
    }


# What each refusal must say (a regex); every one names the cause, none is peft's hub text.
EXPECTED = {
    "other-architecture": (
        r"targets modules \['c_attn'\], which this model does not have.*another architecture"
        r".*\(q_proj, k_proj, v_proj, o_proj"
    ),
    "other-hidden-size": (
        r"tensor shapes do not fit.*q_proj\.lora_A\.weight is \[8, 64\] in the file, \[8, 576\]"
        r".*different base model or with another rank"
    ),
    "rank-mismatch": (
        r"tensor shapes do not fit.*q_proj\.lora_A\.weight is \[8, 576\] in the file, \[4, 576\]"
        r".*different base model or with another rank.*\(r=4\)"
    ),
    "partial": r"incomplete adapter: 56 of 60 LoRA layers have no weights in the file",
    "unknown-modules": (
        r"2 tensor\(s\) for modules this model does not have "
        r"\(e\.g\. model\.layers\.0\.self_attn\.c_attn\.lora_A\.weight\)"
    ),
    "no-weights": r"^no adapter weights \(adapter_model\.safetensors\) in .*no-weights; ",
    "corrupt": r"cannot load adapter: adapter_model\.safetensors is unreadable \(corrupt",
    "unsupported-module": r"cannot load adapter: Target module LlamaRMSNorm.* is not supported",
}


@pytest.fixture(scope="module")
def reference(engine, random_adapters) -> dict[str | None, str]:
    """Greedy answers of the base and of each good adapter, computed once (they are fixed)."""
    answers: dict[str | None, str] = {None: greedy(engine, None)}
    for name, path in random_adapters.items():
        engine.load_adapter(f"reference-{name}", path)
        answers[name] = greedy(engine, f"reference-{name}")
        engine.unload_adapter(f"reference-{name}")
    assert len(set(answers.values())) == len(answers)  # each adapter really changes the answer
    return answers


@pytest.fixture
def fresh_engine(clean_engine):
    """The shared engine; afterwards no adapter and no recorded failure is left behind."""
    yield clean_engine
    for character_id in clean_engine.adapter_failures:
        clean_engine.unload_adapter(character_id)


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_broken_adapter_refused_and_model_left_untouched(fresh_engine, broken, reference, kind):
    engine = fresh_engine
    with pytest.raises(AdapterError, match=EXPECTED[kind]) as refused:
        engine.load_adapter("goku", broken[kind])
    assert "Repo id" not in str(refused.value)  # never peft's hub lookup
    # Nothing of the adapter stays: no peft wrapper, no LoRA layer, the character speaks as base.
    assert not isinstance(engine.model, PeftModel)
    assert not any(isinstance(m, BaseTunerLayer) for m in engine.model.modules())
    assert engine.adapters == {}
    assert greedy(engine, "goku") == reference[None]
    assert engine.adapter_failures == {"goku": str(refused.value)}  # one line already


def test_partial_adapter_counts_missing_layers_from_the_file(fresh_engine, broken, random_adapters):
    all_layers = layers_in(load_file(random_adapters["alpha"] / WEIGHTS))
    kept = layers_in(load_file(broken["partial"] / WEIGHTS))
    with pytest.raises(AdapterError) as refused:
        fresh_engine.load_adapter("goku", broken["partial"])
    message = str(refused.value)
    assert f"{len(all_layers) - len(kept)} of {len(all_layers)} LoRA layers" in message
    assert "(e.g. model.layers.2.self_attn.q_proj.lora_A.weight)" in message


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_reload_over_a_good_adapter_keeps_it_serving(
    fresh_engine, broken, random_adapters, reference, kind
):
    engine = fresh_engine
    engine.load_adapter("goku", random_adapters["alpha"])
    serving = engine.adapter_name("goku")

    with pytest.raises(AdapterError, match=EXPECTED[kind]):
        engine.load_adapter("goku", broken[kind])
    assert engine.adapters == {"goku": random_adapters["alpha"]}
    assert engine.adapter_name("goku") == serving
    assert lora_names(engine) == {serving}  # no half-loaded adapter in any layer
    assert greedy(engine, "goku") == reference["alpha"]
    reason = engine.adapter_failures["goku"]
    assert "\n" not in reason and reason.startswith(("no adapter weights", str(broken[kind])))

    engine.load_adapter("goku", random_adapters["beta"])  # a later good load clears the reason
    assert engine.adapter_failures == {}
    assert greedy(engine, "goku") == reference["beta"]


def test_failure_reason_is_per_character_and_cleared_by_unload(
    fresh_engine, broken, random_adapters
):
    engine = fresh_engine
    engine.load_adapter("goku", random_adapters["alpha"])
    with pytest.raises(AdapterError):
        engine.load_adapter("naruto", broken["partial"])
    with pytest.raises(AdapterError):
        engine.load_adapter("goku", broken["no-weights"])
    assert set(engine.adapter_failures) == {"goku", "naruto"}
    assert "incomplete adapter" in engine.adapter_failures["naruto"]
    engine.unload_adapter("naruto")  # never loaded: the refusal is forgotten all the same
    engine.unload_adapter("goku")
    assert engine.adapter_failures == {} and engine.adapters == {}


def test_valid_adapters_still_load_and_change_outputs(fresh_engine, random_adapters, reference):
    engine = fresh_engine
    engine.load_adapter("alpha", random_adapters["alpha"])
    engine.load_adapter("beta", random_adapters["beta"])
    assert engine.adapter_failures == {}
    assert greedy(engine, "alpha") == reference["alpha"] != reference[None]
    assert greedy(engine, "beta") == reference["beta"] != reference[None]


def test_shipped_trained_adapters_pass_strict_validation(fresh_engine):
    adapters = sorted(PROJECT_ROOT.glob("characters/*/adapter/adapter_config.json"))
    assert adapters, "the repository ships trained adapters"
    for config in adapters:
        fresh_engine.load_adapter(config.parent.parent.name, config.parent)
    assert fresh_engine.adapter_failures == {}
    assert len(fresh_engine.adapters) == len(adapters)

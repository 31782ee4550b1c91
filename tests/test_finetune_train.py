"""Training: masks, shared-prefix loss, recipes, and `train` end to end on the embedded model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model

from bot.characters import CharacterRegistry
from bot.config import PromptConfig
from bot.context import PromptAssembler
from bot.engine import GenerationRequest, SamplingSettings
from bot.generation.request import ScoreRequest
from bot.history import Turn
from bot.training_data import DatasetFiles, RecordError, TrainingRecord, read_records, write_records
from finetune.examples import encode_example
from finetune.losses import batch_loss, make_batches
from finetune.recipe import RecipeError, load_recipe
from finetune.train import train
from tests.helpers import PROJECT_ROOT, make_character

QA = [
    ("What do you eat?", "Everything! Rice, meat, dumplings, heh heh."),
    ("Who is your rival?", "Vegeta! He keeps getting stronger, so I gotta train harder."),
    ("Do you like fighting?", "Oh yeah! Fighting strong guys is the best!"),
    ("Where do you live?", "Out in the mountains with Chi-Chi and Goten."),
    ("Who trains you?", "Whis! He's super strong and he likes food too."),
    ("Are you tired?", "Nope! One more round, then lunch!"),
]


def record(
    question: str, answer: str, *, before: list[Turn] | None = None, ident: str = "x"
) -> TrainingRecord:
    context = (*(before or []), Turn("user", "Mika", question, timestamp=0.0))
    return TrainingRecord(ident, context, answer, scene=ident, source="test")


def write_dataset(folder, train_records, eval_records) -> None:
    files = DatasetFiles(folder)
    write_records(files.train, train_records)
    write_records(files.eval, eval_records)


@pytest.fixture
def goku():
    return CharacterRegistry.load(PROJECT_ROOT / "characters").get("goku")


# -- masks -------------------------------------------------------------------------------------


def test_target_is_the_reply_and_end_of_turn_and_prompt_is_the_inference_prompt(goku, tokenizer):
    before = [
        Turn("user", "Krillin", "Goku, you up for a spar?"),
        Turn("character", "Goku", "Always! Let's go!"),
    ]
    rec = record("Are you hungry after that?", "Starving!", before=before)
    example = encode_example(rec, goku, tokenizer, max_seq_len=1536)
    prompt_len = len(example.body) - example.target_len
    trained = tokenizer.decode(list(example.body[prompt_len:]))
    assert trained == "Starving!" + tokenizer.eos_token  # the end of turn is learned
    assert "Goku:" not in trained
    # The bot's own assembly (lore by key: Krillin, who spoke, fires Goku's best-friend entry
    # and "hungry" his food entry).
    inference = PromptAssembler(tokenizer, PromptConfig()).build(
        goku, list(rec.context[:-1]), rec.context[-1], budget=1536 - example.target_len
    )
    assert [hit.entry.id for hit in inference.lore] == ["best-friend", "food"]
    prompt_ids = list(example.prefix) + list(example.body[:prompt_len])
    assert prompt_ids == tokenizer.encode(inference.text, add_special_tokens=False)
    labels = example.labels
    assert labels[:prompt_len] == [-100] * prompt_len and labels[prompt_len:] == list(
        example.body[prompt_len:]
    )


def test_long_examples_fit_max_seq_len_dropping_history_first(goku, tokenizer):
    before = [Turn("user", "Sam", "train " * 300)]
    rec = record("And now?", "Now we eat!", before=before)
    example = encode_example(rec, goku, tokenizer, max_seq_len=1100)
    assert len(example) <= 1100
    assert tokenizer.decode(list(example.body[-example.target_len :])).startswith("Now we eat!")


def test_a_reply_without_a_user_turn_before_it_is_skipped(goku, tokenizer):
    rec = TrainingRecord("a", (Turn("character", "Goku", "Hi"),), "Hey")
    assert encode_example(rec, goku, tokenizer, max_seq_len=512) is None


def test_malformed_dataset_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(record("a?", "b").to_json() + "\n{not json}\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"train.jsonl:2: not a training record: not JSON"):
        read_records(path)


# -- the shared prefix gives the same loss as full sequences -------------------------------------


def test_shared_prefix_loss_equals_full_sequence_loss(engine, goku, tokenizer):
    records = [record(q, a, ident=str(i)) for i, (q, a) in enumerate(QA[:4])]
    examples = [encode_example(r, goku, tokenizer, max_seq_len=1536) for r in records]
    assert len({e.prefix for e in examples}) == 1 and examples[0].prefix
    [batch] = make_batches(examples, batch_size=8, seed=0)
    model = engine.model
    with torch.no_grad():
        shared, n_shared = batch_loss(model, batch, share_prefix=True, device="cpu")
        full, n_full = batch_loss(model, batch, share_prefix=False, device="cpu")
    assert n_shared == n_full == sum(e.target_len for e in examples)
    assert float(shared) == pytest.approx(float(full), rel=1e-4)


def test_shared_prefix_gradient_reaches_the_adapter(engine, goku, tokenizer):
    records = [record(q, a, ident=str(i)) for i, (q, a) in enumerate(QA[:2])]
    batch = [encode_example(r, goku, tokenizer, max_seq_len=1536) for r in records]
    import copy

    model = get_peft_model(
        copy.deepcopy(engine.model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    model.train()
    loss, n = batch_loss(model, batch, share_prefix=True, device="cpu")
    (loss / n).backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# -- recipes -----------------------------------------------------------------------------------


def test_seed_report_recipe_is_expressible():
    recipe = load_recipe(PROJECT_ROOT / "finetune" / "recipes" / "seed-report.yaml")
    assert (recipe.r, recipe.alpha, recipe.dropout, recipe.epochs) == (4, 8, 0.05, 3)
    assert recipe.target_modules == ["q_proj", "v_proj"]
    assert load_recipe(None, r=16).r == 16  # command-line overrides


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("r: 0\n", "r = 0 is not allowed"),
        ("rank: 4\n", "unknown key 'rank'; allowed keys: r, alpha"),
        ("schedule: wavy\n", "schedule = 'wavy' is not allowed: allowed: 'cosine'"),
        ("- r\n", "a recipe is a mapping"),
    ],
)
def test_bad_recipes_are_explained(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


# -- train end to end --------------------------------------------------------------------------


def test_train_writes_a_better_adapter_that_the_engine_serves(tmp_path, config, goku, clean_engine):
    data = tmp_path / "data"
    write_dataset(
        data,
        [record(q, a, ident=f"t{i}") for i, (q, a) in enumerate(QA * 3)],
        [record(q, a, ident=f"e{i}") for i, (q, a) in enumerate(QA[:2])],
    )
    out = tmp_path / "goku" / "adapter"
    recipe = load_recipe(None, max_steps=4, batch_size=6, eval_every=2, learning_rate=2e-3)
    run = dict(data_dir=data, out_dir=out, recipe=recipe, config=config, progress=False)
    result = train(goku, work_dir=tmp_path / "work", **run)
    assert result.steps == 4 and result.train_examples == 18 and result.eval_examples == 2
    # Eval lines repeat training lines here, so the loss must fall.
    assert result.eval_loss_after < result.eval_loss_before
    card = json.loads((out / "training.json").read_text())
    assert card["recipe"]["r"] == 8 and card["data_hash"] and card["curve"][0]["step"] == 0
    assert (out / "TRAINING.md").exists() and (out / "loss_curve.png").stat().st_size > 1000
    assert not (tmp_path / "work" / "goku-checkpoint").exists()  # removed when finished

    clean_engine.load_adapter("goku", out)
    # Prompted as the bot prompts (and as training did): with the lore the message fires.
    assembler = PromptAssembler.from_config(clean_engine.tokenizer, config, [goku])
    prompt = assembler.build(goku, [], Turn("user", "Mika", "What do you eat?"))
    settings = SamplingSettings(max_new_tokens=12, temperature=0, top_p=1, repetition_penalty=1)
    [with_adapter] = clean_engine.generate([GenerationRequest(prompt.text, settings, "goku")])
    assert with_adapter.text.strip()
    # The engine serves what was learned: the trained answer is likelier under the adapter.
    trained = QA[0][1]
    [tuned, base] = clean_engine.score(
        [ScoreRequest(prompt.text, trained, "goku"), ScoreRequest(prompt.text, trained, None)]
    )
    assert tuned.mean > base.mean

    # Training again keeps the first adapter as adapter.previous.
    again = {**run, "recipe": load_recipe(None, max_steps=1, batch_size=6)}
    train(goku, work_dir=tmp_path / "work", **again)
    assert (out.parent / "adapter.previous" / "adapter_model.safetensors").exists()


def test_missing_training_data_is_explained(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "train", "goku", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert (
        "train.jsonl does not exist; make it with `python -m finetune build --character goku"
        in (result.stderr)
    )


@pytest.mark.model
def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, [record(q, a, ident=f"t{i}") for i, (q, a) in enumerate(QA * 2)], [])
    (tmp_path / "models").symlink_to(PROJECT_ROOT / ".data" / "models")
    env = {**os.environ, "CHARBOT_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "finetune", "train", "goku", "--data", str(data),
        "--out", str(tmp_path / "adapter"), "--max-steps", "24", "--batch-size", "2",
        "--checkpoint-every", "1", "--quiet",
    ]  # fmt: skip
    # 24 steps: on a fast, idle CPU 6 steps (one checkpoint each) ended before the poll below
    # saw a checkpoint, and the interrupt came too late.
    # A shell without job control starts background commands with SIGINT ignored, and Python
    # keeps it ignored: give the child the default, so the interrupt below reaches it.
    first = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = tmp_path / "training" / "goku-checkpoint" / "state.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert "resumes from its last checkpoint" in stderr
    assert not (tmp_path / "adapter").exists()  # nothing half-written

    second = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "resumed from the checkpoint at step" in second.stdout
    assert "24 steps" in second.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_make_batches_share_one_prefix_per_batch(goku, tokenizer):
    other = make_character()
    records = [record(q, a, ident=str(i)) for i, (q, a) in enumerate(QA)]
    examples = [encode_example(r, goku, tokenizer, max_seq_len=1536) for r in records[:3]]
    examples += [encode_example(r, other, tokenizer, max_seq_len=1536) for r in records[3:]]
    batches = make_batches(examples, batch_size=4, seed=1)
    assert sorted(len(b) for b in batches) == [3, 3]
    assert all(len({e.prefix for e in b}) == 1 for b in batches)
    assert make_batches(examples, 4, seed=1) == batches  # deterministic


def test_fingerprint_allows_no_eval_file_and_changes_with_the_recipe(tmp_path):
    from finetune.recipe import Recipe
    from finetune.train import data_hash

    train_file = tmp_path / "train.jsonl"
    train_file.write_text(record("a?", "b").to_json() + "\n")
    missing_eval = tmp_path / "eval.jsonl"
    first = data_hash(train_file, missing_eval, recipe=Recipe(), base="embedded")
    assert first == data_hash(train_file, missing_eval, recipe=Recipe(), base="embedded")
    assert first != data_hash(train_file, missing_eval, recipe=Recipe(r=4), base="embedded")

"""Synthetic-Persona-Chat: dialogues, the held-out split, persona prompts, per-example losses."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bot.config import PROJECT_ROOT
from bot.training_data import read_records
from finetune.examples import encode_all, encode_example
from finetune.losses import evaluate, example_losses, make_batches
from finetune.persona_chat import (
    NO_PERSONA,
    next_turn_records,
    persona_card,
    read_dialogues,
    training_files,
)
from finetune.recipe import Recipe
from tests.helpers import write_spc

FIXTURE = Path(__file__).parent / "fixtures" / "finetune" / "persona_chat.csv"


def test_dialogues_are_read_as_build_reads_them():
    first, second = read_dialogues(FIXTURE)
    assert first.personas["User 2"] == ["I am a chef.", "I love spicy food."]
    assert first.turns == [
        ("User 1", "Hi, what do you do?"),
        ("User 2", "I'm a chef. I cook spicy food all day."),
        ("User 1", "Spicy! I could never."),
        ("User 2", "You get used to it. It just takes practice."),  # continuation joined
    ]
    assert second.turns[2] == ("User 1", "What do you grow?")  # "* User 1:" is a turn


def test_next_turn_records_answer_user_1_with_context_and_persona():
    first, _ = read_dialogues(FIXTURE)
    records = next_turn_records(first, context_turns=2)
    assert [r.reply for r in records] == [
        "I'm a chef. I cook spicy food all day.",
        "You get used to it. It just takes practice.",
    ]
    assert [(t.role, t.author) for t in records[1].context] == [
        ("character", "User 2"),
        ("user", "User 1"),
    ]
    assert records[0].persona == "I am a chef. I love spicy food."
    assert [r.row for r in records] == [0, 0]


def test_training_files_never_hold_a_held_out_dialogue(tmp_path):
    spc = write_spc(tmp_path / "spc.csv", rows=12)
    train, held = training_files(spc, tmp_path / "data", dialogues=100, eval_dialogues=1)

    def rows(path: Path) -> set[int]:
        return {int(r.id.split("-")[0].removeprefix("row")) for r in read_records(path)}

    assert rows(train) == {1, 2, 3, 4, 6, 7, 8, 9, 11}  # every 5th row (0, 5, 10) held out
    assert rows(held) == {10}  # the last held-out row; the report starts from row 0
    for record in read_records(train):
        k = record.id.split("-")[0].removeprefix("row")
        assert record.persona == f"I keep {k} goats."
        assert record.reply.startswith(f"I have {k} goats")
    assert len(read_records(train)) == 9 * 3
    assert not list((tmp_path / "data").glob("*.tmp"))


def test_a_record_s_persona_is_the_card_description(tokenizer):
    record = next_turn_records(read_dialogues(FIXTURE)[0])[0]
    card = persona_card(None)
    with_persona = encode_example(record, card, tokenizer, max_seq_len=512)
    without = encode_example(replace(record, persona=None), card, tokenizer, max_seq_len=512)
    assert "I am a chef. I love spicy food." in tokenizer.decode(with_persona.prefix)
    assert NO_PERSONA in tokenizer.decode(without.prefix)
    assert with_persona.body[-with_persona.target_len :] == without.body[-without.target_len :]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_example_losses_are_each_example_s_own_mean_loss(engine, tokenizer, share_prefix):
    dialogues = read_dialogues(FIXTURE)
    records = [r for d in dialogues for r in next_turn_records(d)]
    records += [replace(records[0], reply="Bananas orbit the moon quietly.")]
    examples, _ = encode_all(records, persona_card(None), tokenizer, max_seq_len=512)
    recipe = Recipe(batch_size=8, share_prefix=share_prefix)

    losses = example_losses(engine.model, examples, recipe, "cpu")

    alone = [evaluate(engine.model, [e], Recipe(batch_size=1), "cpu") for e in examples]
    assert losses == pytest.approx(alone, abs=1e-4)
    assert losses[-1] > losses[0]  # the nonsense reply is less likely than the real one


def test_batches_mix_prefixes_only_when_prefixes_are_not_shared(tokenizer):
    records = [r for d in read_dialogues(FIXTURE) for r in next_turn_records(d)]
    examples, _ = encode_all(records, persona_card(None), tokenizer, max_seq_len=512)
    assert len({e.prefix for e in examples}) == 2  # two personas
    assert all(len({e.prefix for e in b}) == 1 for b in make_batches(examples, 8, seed=0))
    [mixed] = make_batches(examples, 8, seed=0, by_prefix=False)
    assert len(mixed) == len(examples)


def test_train_persona_chat_writes_an_adapter_from_training_rows_only(tmp_path):
    spc = write_spc(tmp_path / "spc.csv", rows=8)
    (tmp_path / "models").symlink_to(PROJECT_ROOT / ".data" / "models")
    env = {**os.environ, "CHARBOT_DATA_DIR": str(tmp_path)}
    command = [
        sys.executable, "-m", "finetune", "train-persona-chat", "--spc", str(spc),
        "--dialogues", "3", "--recipe", "finetune/recipes/persona-chat.yaml",
        "--max-steps", "2", "--out", str(tmp_path / "adapter"), "--quiet",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "2 steps on 9 examples" in result.stdout  # rows 1, 2, 3: three answers each
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    missing = subprocess.run(
        [*command[:4], "--spc", str(tmp_path / "nope.csv")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert "nope.csv: no Synthetic-Persona-Chat CSV there" in missing.stderr

"""DPO's anchor on ordinary dialogue: the KL from the reference adapter (finetune/dpo_anchor.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.__main__ import main
from finetune.dpo import DpoError, train_dpo
from finetune.dpo_anchor import anchor_kl, reference_batches
from finetune.losses import target_logits
from finetune.persona_chat import HELD_OUT_EVERY, anchor_records, encode_records
from finetune.preference_data import PreferencePair
from finetune.recipe import DpoRecipe, RecipeError, load_recipe
from tests.helpers import make_character, write_spc


def test_anchor_records_are_training_dialogues_middle_turns(tmp_path):
    spc = write_spc(tmp_path / "spc.csv", rows=11)  # held out: rows 0, 5, 10
    records = anchor_records(spc, 4)
    assert [r.row for r in records] == [1, 2, 3, 4]
    assert all(r.row % HELD_OUT_EVERY for r in anchor_records(spc, 100))
    # The middle User 2 turn, with its persona and the turns before it.
    assert records[0].reply == "I have 1 goats (1)."
    assert records[0].persona == "I keep 1 goats."
    assert records[0].context[-1].content == "Question 1 for row 1?"


def test_anchor_needs_the_shared_prefix_loop_and_conversation(tmp_path):
    with pytest.raises(RecipeError, match="anchor_weight needs share_prefix: true"):
        load_recipe(None, DpoRecipe, anchor_weight=1.0)
    recipe = load_recipe(None, DpoRecipe, anchor_weight=1.0, share_prefix=True)
    pair = PreferencePair("goku", "rule", "p", "a", "b")
    with pytest.raises(DpoError, match="no conversation to anchor on; give Synthetic-Persona"):
        train_dpo(
            make_character(id="goku"),
            start_adapter=tmp_path,
            pairs=[pair],
            out_dir=tmp_path / "out",
            recipe=recipe,
            config=None,
            work_dir=tmp_path,
        )


def test_the_command_names_a_missing_anchor_csv(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(PreferencePair("goku", "rule", "p", "a", "b").to_json() + "\n")
    missing = tmp_path / "nowhere.csv"
    argv = ["train", "goku", "--method", "dpo", "--preferences", str(pairs), "--spc", str(missing)]
    assert main([*argv, "--share-prefix", "true", "--anchor-weight", "2"]) == 2
    error = capsys.readouterr().err
    assert f"{missing}: no Synthetic-Persona-Chat CSV there" in error
    assert "--anchor-weight 0" in error


@pytest.fixture
def anchor_examples(tmp_path, tokenizer):
    return encode_records(anchor_records(write_spc(tmp_path / "spc.csv", rows=5), 3), tokenizer)


def full_kl(model, examples, reference: torch.Tensor) -> torch.Tensor:
    logits, _, _ = target_logits(model, examples, share_prefix=False, device="cpu")
    return F.kl_div(F.log_softmax(logits, -1), reference, log_target=True, reduction="none")


def test_anchor_kl_is_zero_at_the_reference_and_exact_with_every_token_kept(
    clean_engine, random_adapters, anchor_examples
):
    engine = clean_engine
    engine.load_adapter("alpha", random_adapters["alpha"])
    vocab = engine.model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        with engine.using_adapter("alpha") as model:
            batches = reference_batches(model, anchor_examples, batch_size=2, device="cpu")
            exact = reference_batches(
                model, anchor_examples[:2], batch_size=2, device="cpu", top_k=vocab
            )
            at_reference = [anchor_kl(model, b, device="cpu").item() for b in batches]
            logits, _, _ = target_logits(model, exact[0].examples, share_prefix=False, device="cpu")
            reference = F.log_softmax(logits, -1)
        with engine.using_adapter(None) as model:
            binned = anchor_kl(model, batches[0], device="cpu").item()
            kept_all = anchor_kl(model, exact[0], device="cpu").item()
            direct = full_kl(model, exact[0].examples, reference).sum(-1).mean().item()
    assert at_reference == pytest.approx([0.0, 0.0], abs=1e-5)
    assert kept_all == pytest.approx(direct, rel=1e-3)
    # Merging tokens into one bin can only lose divergence, never add it.
    assert 0 < binned <= kept_all + 1e-6
    assert [len(b.examples) for b in batches] == [2, 1]

"""Synthetic preference pairs and DPO training of an adapter (trl's DPOTrainer)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from bot.characters import CharacterRegistry
from bot.guards import AI_RULE
from bot.history import Turn
from bot.prompt import build_prompt
from bot.training_data import TrainingRecord
from finetune.__main__ import main
from finetune.dpo import loss_settings, split_pairs, train_dpo
from finetune.dpo_shared import (
    EncodedPair,
    common_prefix,
    encode_pairs,
    pair_loss,
    sequence_logps,
)
from finetune.examples import completion_text
from finetune.losses import PrefixCache, token_losses
from finetune.persona_chat import anchor_records
from finetune.preference_data import PreferencePair, read_pairs
from finetune.recipe import DpoRecipe, RecipeError, load_recipe
from finetune.synthesize import (
    IDENTITY_QUESTIONS,
    RulePrompt,
    identity_answers,
    judge,
    mend_pairs,
    mended,
    rule_mends,
    rule_pairs,
    rule_prompts,
    says_own_name,
)
from tests.helpers import PROJECT_ROOT, write_spc

ZENO = 1  # Goku's rule: always calls Zeno "Mr. Zenny"
IDENTITY = 3  # Goku's rule: he is Goku, not an AI


@pytest.fixture(scope="module")
def goku():
    return CharacterRegistry.load(PROJECT_ROOT / "characters").get("goku")


def zeno_prompt(goku) -> RulePrompt:
    rule = goku.rules[ZENO]
    example = rule.examples[0]
    return RulePrompt(ZENO, rule.rule, example.user, "<prompt>", ("User",), (example.character,))


# -- synthetic rule pairs ----------------------------------------------------------------------


def test_judge_tells_this_rule_broken_from_another_rule_broken(goku):
    rule_prompt = zeno_prompt(goku)
    assert judge(goku, rule_prompt, "Zeno? He's the king of everything.") == "broke"
    assert judge(goku, rule_prompt, "Mr. Zenny is my buddy!") == "passed"
    # Says Mr. Zenny, but calls himself an AI: a bad answer, but not one of this rule.
    assert judge(goku, rule_prompt, "As an AI, I like Mr. Zenny.") == "other"


def test_rule_pairs_put_breaking_answers_against_the_examples_else_passing_ones(goku):
    rule_prompt = zeno_prompt(goku)
    answers = [
        "Zeno is scary.",
        "Mr. Zenny is my buddy!",
        "Zeno is scary.",  # the same answer twice is one pair
        "As an AI, I like Mr. Zenny.",
        "Lord Zeno rules all.",
    ]
    pairs, verdicts = rule_pairs(goku, rule_prompt, answers, limit=4)
    example = rule_prompt.examples[0]
    assert [(p.chosen, p.rejected) for p in pairs] == [
        (example, "Zeno is scary."),
        (example, "Lord Zeno rules all."),
    ]
    assert all(p.source == "rule" and p.detail == rule_prompt.rule for p in pairs)
    assert verdicts == {"broke": 2, "passed": 1, "other": 1}
    assert len(rule_pairs(goku, rule_prompt, answers, limit=1)[0]) == 1
    # Without an example, the samples that keep every guard are the good answers.
    bare = dataclasses.replace(rule_prompt, examples=())
    pairs, _ = rule_pairs(goku, bare, answers, limit=4)
    assert [p.chosen for p in pairs] == ["Mr. Zenny is my buddy!"] * 2


def test_no_good_answer_is_the_chosen_reply_of_more_than_max_uses_pairs(goku):
    rule_prompt = zeno_prompt(goku)
    example = rule_prompt.examples[0]
    other = "Mr. Zenny? My little buddy!"
    two = dataclasses.replace(rule_prompt, examples=(example, other))
    uses = Counter()
    chosen = []
    for n in range(3):  # three prompts of the same rule, two breaking answers each
        answers = [f"Zeno is scary {n}.", f"Lord Zeno rules {n}.", "Mr. Zenny is my buddy!"]
        pairs, _ = rule_pairs(goku, two, answers, limit=4, uses=uses, max_uses=2)
        chosen += [p.chosen for p in pairs]
    # Each breaking answer gets the example used least so far; then both are used up.
    assert chosen == [example, other] * 2
    assert uses == {example: 2, other: 2}


def test_identity_challenges_take_the_card_s_own_answers(goku, tokenizer):
    rule = goku.rules[IDENTITY]
    card = [*rule.examples, *rule.training_examples]  # "Are you an AI?" -> "A what? I'm Goku!"
    assert identity_answers(goku) == tuple(e.character for e in card)
    prompts, _ = rule_prompts(goku, [[]], tokenizer=tokenizer, budget=1536)
    ai = {p.message: p.examples for p in prompts if p.rule_index is None}
    # The default questions take every such answer; the card's own questions their own answer.
    assert all(ai[q] == identity_answers(goku) for q in IDENTITY_QUESTIONS)
    assert all(ai[e.user] == (e.character,) for e in card)
    assert len(ai) == len(IDENTITY_QUESTIONS) + len(card)


def test_rule_prompts_ask_each_guarded_rules_examples_after_each_history(goku, tokenizer):
    windows = [[], [Turn("user", "Krillin", "Hungry?"), Turn("character", "Goku", "Always!")]]
    prompts, skipped = rule_prompts(goku, windows, tokenizer=tokenizer, budget=1536)
    guarded = [i for i, r in enumerate(goku.rules) if r.guard]
    rules = [goku.rules[i] for i in guarded]
    asked = [e for r in rules for e in (*r.examples, *r.training_examples)]
    questions = len(IDENTITY_QUESTIONS) + len(identity_answers(goku)) + len(asked)
    assert len(prompts) == questions * len(windows)
    assert {p.rule_index for p in prompts} == {None, *guarded}
    ai = [p for p in prompts if p.rule_index is None]
    assert set(IDENTITY_QUESTIONS) < {p.message for p in ai} and ai[0].rule == AI_RULE
    assert all(p.prompt.endswith("<|im_start|>assistant\n") for p in prompts)
    assert any("Krillin" in p.prompt for p in prompts) and "Krillin" in prompts[1].authors
    # Goku's one unguarded rule is his identity rule: asked under the default AI guard.
    assert [i for i, r in enumerate(goku.rules) if not r.guard] == [3] and skipped == []
    bare = goku.model_copy(update={"ai_guard": False})
    _, skipped = rule_prompts(bare, [[]], tokenizer=tokenizer, budget=1536)
    assert skipped == ["rules[3] has no guard to judge answers by"]


def test_training_examples_are_asked_with_their_own_answers_but_never_shown(goku, tokenizer):
    zeno = goku.rules[ZENO]
    assert zeno.training_examples  # the card teaches the rule on more phrasings than it shows
    prompts, _ = rule_prompts(goku, [[]], tokenizer=tokenizer, budget=1536)
    asked = {p.message: p for p in prompts if p.rule_index == ZENO}
    for example in zeno.training_examples:
        assert asked[example.user].examples == (example.character,)
    # Not in the prompt: the card's shown example is, the training-only answers are not.
    system = prompts[0].prompt
    assert zeno.examples[0].character in system
    assert not any(e.character in system for e in zeno.training_examples)
    # A rule with only training examples is still asked.
    only_training = goku.model_copy(
        update={"rules": [zeno.model_copy(update={"examples": []}), *goku.rules[2:]]}
    )
    prompts, skipped = rule_prompts(only_training, [[]], tokenizer=tokenizer, budget=1536)
    assert {e.user for e in zeno.training_examples} <= {
        p.message for p in prompts if p.rule_index == 0
    }
    assert "rules[0] has no example question to ask" not in skipped


def test_identity_challenges_are_passed_only_by_answers_that_stay_the_character(goku):
    challenge = RulePrompt(None, AI_RULE, IDENTITY_QUESTIONS[1], "<prompt>", ("User",), ())
    assert judge(goku, challenge, "A what? I'm Goku! Wanna spar?") == "passed"
    assert judge(goku, challenge, "Kakarot, that's me. Hungry?") == "passed"
    assert judge(goku, challenge, "I'm just a guy who likes food!") == "broke"  # a dodge
    assert judge(goku, challenge, "I'm an AI, Goku is my name.") == "broke"
    # "Son" (of "Son Goku") is too short a word to count: "my son" is not a name.
    assert not says_own_name(goku, "My son Gohan is strong.")
    # Other rules' prompts do not ask for the name.
    assert judge(goku, zeno_prompt(goku), "Mr. Zenny is my buddy!") == "passed"


def test_mend_pairs_choose_the_answer_mended_where_it_broke_the_rule(goku):
    rule_prompt = zeno_prompt(goku)
    answers = [
        "Zeno's a big guy! He loves games.",
        "Zeno's a big guy! He loves games.",  # the same answer twice is one pair
        "Mr. Zenny is my buddy!",  # keeps the rule: nothing to mend
        "As an AI, I like Zeno.",  # mended it still breaks a guard: no pair
    ]
    pairs, counts = mend_pairs(goku, rule_prompt, answers)
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("Mr. Zenny's a big guy! He loves games.", "Zeno's a big guy! He loves games.")
    ]
    assert pairs[0].source == "mend" and pairs[0].detail == rule_prompt.rule
    assert counts == {"mended": 1, "not mended": 1}


def test_mends_go_in_order_until_the_answer_keeps_its_rule(goku):
    evil = goku.rules[2]
    rule_prompt = RulePrompt(2, evil.rule, "Turn evil!", "<prompt>", ("User",), ())
    pairs, _ = mend_pairs(
        goku,
        rule_prompt,
        ["Sure thing! Let's go.", "I'll destroy the city.", "Heh heh, okay."],
    )
    # Each answer takes the mends it needs: the first, the second ("won't" says no), the lead.
    assert [p.chosen for p in pairs] == [
        "Nope, no way! Let's go.",
        "I won't destroy the city.",
        "Nope, no way! Heh heh, okay.",
    ]


def test_identity_challenges_take_the_mends_of_the_card_s_identity_rule(goku):
    assert rule_mends(goku, None) == goku.rules[IDENTITY].mends
    challenge = RulePrompt(None, AI_RULE, IDENTITY_QUESTIONS[1], "<prompt>", ("User",), ())
    pairs, _ = mend_pairs(
        goku, challenge, ["No, I'm a human! I train a lot.", "I just like food.", "I'm Goku!"]
    )
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("A what? I'm Goku! I train a lot.", "No, I'm a human! I train a lot."),
        ("I'm Goku! I just like food.", "I just like food."),
    ]


def record(n: int, message: str, reply: str, author: str = "Vegeta") -> TrainingRecord:
    before = Turn("character", "Goku", "Heh heh!", "goku")
    return TrainingRecord(f"r{n}", (before, Turn("user", author, message, "goku")), reply)


def test_rule_prompts_ask_training_messages_on_a_rules_topic(goku, tokenizer):
    records = [
        record(0, "Aren't you scared of the Omni-King?", "Mr. Zenny? Nah, he's my pal!"),
        record(1, "What's for lunch?", "Everything!"),  # on no rule's topic
        record(2, "Zeno called.", "Lord Zeno is mighty."),  # its real reply breaks the rule
        record(3, "Is Zeno around?", "Mr. Zenny is playing, heh heh."),
        record(4, "Can Zeno play?", "Mr. Zenny always wants to play!"),
    ]
    prompts, _ = rule_prompts(
        goku, [[]], tokenizer=tokenizer, budget=1536, records=records, topic_messages=2
    )
    card = {e.user for e in (*goku.rules[ZENO].examples, *goku.rules[ZENO].training_examples)}
    on_topic = [p for p in prompts if p.rule_index == ZENO and p.message not in card]
    # The first two usable lines, each with no history and in its own conversation.
    assert [p.message for p in on_topic] == [records[0].message.content] * 2 + [
        records[3].message.content
    ] * 2
    assert on_topic[0].examples == ("Mr. Zenny? Nah, he's my pal!",)
    assert "Heh heh!" not in on_topic[0].prompt and "Heh heh!" in on_topic[1].prompt
    assert "Vegeta" in on_topic[1].authors
    none, _ = rule_prompts(goku, [[]], tokenizer=tokenizer, budget=1536, records=records)
    assert len(none) == len(prompts) - 4  # topic_messages=0: only the card's questions


def test_held_out_pairs_are_whole_prompts():
    pairs = [
        PreferencePair("goku", "rule", f"prompt {n // 3}", f"good {n}", f"bad {n}")
        for n in range(30)
    ]
    train, held_out = split_pairs(pairs, 0.2, seed=0)
    assert len(train) + len(held_out) == 30 and len(held_out) == 6
    assert not {p.prompt for p in train} & {p.prompt for p in held_out}


# -- DPO with the card prefix shared (the project's own loop) ------------------------------------


def goku_pairs(goku, tokenizer, questions, good, bad) -> list[PreferencePair]:
    pairs = []
    for question, chosen, rejected in zip(questions, good, bad, strict=True):
        message = Turn("user", "User", question, "goku")
        prompt = build_prompt(goku, [], message, tokenizer=tokenizer, budget=1536).text
        pairs.append(PreferencePair("goku", "rule", prompt, chosen, rejected))
    return pairs


def test_common_prefix():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == (1, 2)
    assert common_prefix([[5, 6], [7]]) == () and common_prefix([]) == ()


def test_encoded_pairs_share_the_card_and_keep_every_token(goku, tokenizer):
    pairs = goku_pairs(goku, tokenizer, QUESTIONS[:3], GOOD[:3], BAD[:3])
    encoded, skipped = encode_pairs(pairs, tokenizer, max_seq_len=2048)
    assert skipped == 0 and len(encoded) == 3
    prefix = encoded[0].chosen.prefix
    card = tokenizer.encode(goku.description, add_special_tokens=False)
    assert len(prefix) > len(card)  # the whole system message at least
    for pair, enc in zip(pairs, encoded, strict=True):
        for row, reply in ((enc.chosen, pair.chosen), (enc.rejected, pair.rejected)):
            assert row.prefix == prefix
            target = tokenizer.encode(completion_text(tokenizer, reply), add_special_tokens=False)
            prompt = tokenizer.encode(pair.prompt, add_special_tokens=False)
            assert list(row.prefix + row.body) == prompt + target
            assert row.target_len == len(target)
    longest = max(len(e.rejected) for e in encoded)
    assert encode_pairs(pairs, tokenizer, max_seq_len=longest - 1)[1] >= 1


def test_pair_loss_is_dpo_s_sigmoid_loss_plus_the_weighted_chosen_nll():
    import math

    import torch

    from finetune.examples import EncodedExample

    row = EncodedExample("r", (), (1, 2), 2)
    pair = EncodedPair(row, row, reference=(-4.0, -6.0))
    logps, counts = torch.tensor([-4.0, -6.0]), torch.tensor([2, 2])
    loss, figures = pair_loss([pair], logps, counts, DpoRecipe(beta=0.1))
    assert float(loss) == pytest.approx(math.log(2)) and figures["rewards/accuracies"] == 0
    # The policy now prefers the chosen reply by 2 nats more than the reference did.
    loss, figures = pair_loss([pair], torch.tensor([-3.0, -7.0]), counts, DpoRecipe(beta=0.1))
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.2)))
    assert figures["rewards/margins"] == pytest.approx(0.2) and figures["rewards/accuracies"] == 1
    weighted, _ = pair_loss([pair], logps, counts, DpoRecipe(beta=0.1, sft_weight=0.5))
    assert float(weighted) == pytest.approx(math.log(2) + 0.5 * 4.0 / 2)
    # Only the pairs that take the SFT term count in it: here the second pair's 3 tokens, 9 nats.
    unanchored = dataclasses.replace(pair, sft=False)
    anchored = EncodedPair(row, row, reference=(-9.0, -9.0))
    logps2, counts2 = torch.tensor([-4.0, -9.0, -6.0, -9.0]), torch.tensor([2, 3, 2, 3])
    recipe = DpoRecipe(beta=0.1, sft_weight=0.5)
    mixed, _ = pair_loss([unanchored, anchored], logps2, counts2, recipe)
    assert float(mixed) == pytest.approx(math.log(2) + 0.5 * 9.0 / 3)
    none, _ = pair_loss([unanchored], logps, counts, recipe)
    assert float(none) == pytest.approx(math.log(2))


def test_encode_pairs_marks_the_sources_that_take_the_sft_term(goku, tokenizer):
    rule, contrast = goku_pairs(goku, tokenizer, QUESTIONS[:2], GOOD[:2], BAD[:2])
    contrast = dataclasses.replace(contrast, source="contrast")
    encoded, _ = encode_pairs([rule, contrast], tokenizer, 2048, sft_sources=["contrast"])
    assert [p.sft for p in encoded] == [False, True]
    encoded, _ = encode_pairs([rule, contrast], tokenizer, 2048)
    assert [p.sft for p in encoded] == [True, True]  # None: every pair, as trl does


def test_recipe_refuses_unknown_sft_sources_and_sft_sources_for_trl(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("share_prefix: true\nsft_sources: [contrast, chat]\n")
    with pytest.raises(RecipeError, match="chat is not a source; allowed: swipe, vote, rule"):
        load_recipe(bad, DpoRecipe)
    trl = tmp_path / "trl.yaml"
    trl.write_text("share_prefix: false\nsft_sources: [contrast]\n")
    with pytest.raises(RecipeError, match="sft_sources needs share_prefix: true"):
        load_recipe(trl, DpoRecipe)


def test_shared_prefix_log_probs_equal_full_sequences(engine, goku, tokenizer):
    import torch

    pairs = goku_pairs(goku, tokenizer, QUESTIONS[:2], GOOD[:2], BAD[:2])
    encoded, _ = encode_pairs(pairs, tokenizer, max_seq_len=2048)
    rows = [p.chosen for p in encoded] + [p.rejected for p in encoded]
    model = engine.model
    with torch.no_grad():
        shared, counts = sequence_logps(
            model, rows, device="cpu", prefixes=PrefixCache(model, device="cpu"), step=0
        )
        losses, row_of = token_losses(model, rows, share_prefix=False, device="cpu")
    full = torch.zeros(len(rows)).index_add(0, row_of, -losses)
    assert counts.tolist() == [r.target_len for r in rows]
    assert shared.tolist() == pytest.approx(full.tolist(), rel=1e-4)


# -- recipes and the command line --------------------------------------------------------------


def test_dpo_recipe_refuses_sft_only_settings():
    assert load_recipe(None, DpoRecipe, beta=0.2).beta == 0.2
    with pytest.raises(
        RecipeError, match=r"--early-stopping-patience, --r: not a setting of DpoRecipe"
    ):
        load_recipe(None, DpoRecipe, r=8, share_prefix=True, early_stopping_patience=2)
    with pytest.raises(RecipeError, match=r"--beta: not a setting of Recipe"):
        load_recipe(None, beta=0.2)
    recipe = load_recipe(PROJECT_ROOT / "finetune" / "recipes" / "dpo-cpu.yaml", DpoRecipe)
    assert recipe.beta > 0 and recipe.learning_rate > 0


def test_dpo_loss_adds_an_sft_term_only_when_weighted():
    assert loss_settings(DpoRecipe()) == {"loss_type": ["sigmoid"], "loss_weights": None}
    assert loss_settings(DpoRecipe(sft_weight=0.5)) == {
        "loss_type": ["sigmoid", "sft"],
        "loss_weights": [1.0, 0.5],
    }
    with pytest.raises(RecipeError, match=r"--sft-weight: not a setting of Recipe"):
        load_recipe(None, sft_weight=1.0)


@pytest.fixture
def cast_config(tmp_path, monkeypatch):
    """A config whose characters folder holds a copy of Goku (card and data, no adapter)."""
    import shutil

    chars = tmp_path / "characters"
    shutil.copytree(
        PROJECT_ROOT / "characters" / "goku",
        chars / "goku",
        ignore=shutil.ignore_patterns("adapter*", "preferences"),
    )
    shutil.copytree(PROJECT_ROOT / "characters" / "_lorebooks", chars / "_lorebooks")
    config = tmp_path / "config.yaml"
    config.write_text(f"characters_dir: {chars}\ndata_dir: {tmp_path / 'data'}\n")
    monkeypatch.setenv("CHARBOT_CONFIG", str(config))
    return chars


def test_dpo_without_pairs_says_how_to_make_them(cast_config, capsys):
    assert main(["train", "goku", "--method", "dpo"]) == 2
    error = capsys.readouterr().err
    assert "no preference pairs for goku in" in error
    assert "python -m finetune preferences synth goku" in error


def test_dpo_without_an_adapter_to_continue_says_so(cast_config, capsys, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(PreferencePair("goku", "rule", "p", "a", "b").to_json() + "\n")
    assert main(["train", "goku", "--method", "dpo", "--preferences", str(pairs)]) == 2
    error = capsys.readouterr().err
    assert "no adapter to continue from" in error
    assert "python -m finetune train goku" in error


def test_sft_refuses_dpo_options(cast_config, capsys, tmp_path):
    assert main(["train", "goku", "--preferences", str(tmp_path / "p.jsonl")]) == 2
    assert "--preferences and --sources are for --method dpo" in capsys.readouterr().err
    assert main(["train", "goku", "--beta", "0.2"]) == 2
    assert "--beta: not a setting of Recipe" in capsys.readouterr().err


def test_bad_synth_options_are_refused_before_loading_anything(cast_config, capsys):
    assert main(["preferences", "synth", "goku", "--samples", "0"]) == 2
    assert "--samples 0: give at least 1" in capsys.readouterr().err
    assert main(["preferences", "synth", "goku", "--topic-messages", "-1"]) == 2
    assert "--topic-messages -1: give 0 (none) or more" in capsys.readouterr().err
    assert main(["preferences", "synth", "goku", "--chosen-uses", "-2"]) == 2
    assert "--chosen-uses -2: give 0 (no limit) or more" in capsys.readouterr().err


# -- DPO on the embedded model -----------------------------------------------------------------

GOOD = [
    "Ha! Let's spar out in the mountains!",
    "Heh heh, I'm starving. Got any food?",
    "I'm Goku! Wanna train with me?",
    "Whoa, you sound strong! Let's fight!",
    "Oh boy, a match? Count me in!",
    "Heh, Chi-Chi says I eat too much. Ha!",
]
BAD = [
    "I am an AI language model and cannot spar.",
    "As an assistant, I do not eat food.",
    "I am a computer program designed to help.",
    "As an AI, I have no physical strength.",
    "I am a virtual assistant without opinions.",
    "As a language model, I cannot have a wife.",
]
QUESTIONS = [
    "Want to train?",
    "Are you hungry?",
    "Who are you?",
    "I lifted a boulder today.",
    "Tournament tomorrow?",
    "How is your family?",
]


@pytest.mark.parametrize("share_prefix", [False, True], ids=["trl", "shared-prefix"])
def test_dpo_lowers_the_loss_and_raises_reward_accuracy_on_held_out_pairs(
    goku, config, tokenizer, tmp_path, share_prefix
):
    # A short card: trl runs every prompt token with gradient, and ~270 tokens of it cost minutes.
    short = {"description": "A cheerful Saiyan fighter.", "speech_style": "Short sentences."}
    card = goku.model_copy(
        update={"examples": [], "rules": [], "personality": [], "scenario": "", **short}
    )
    pairs = []
    for shift in range(2):  # every question with two of the pairs, each prompt one group
        for n, question in enumerate(QUESTIONS):
            message = Turn("user", "User", question, "goku")
            prompt = build_prompt(card, [], message, tokenizer=tokenizer, budget=512).text
            chosen, rejected = GOOD[(n + shift) % 6], BAD[(n + shift) % 6]
            pairs.append(PreferencePair("goku", "rule", prompt, chosen, rejected))
    out = tmp_path / "adapter"
    recipe = DpoRecipe(
        max_steps=6,
        batch_size=4,
        learning_rate=1e-3,
        eval_fraction=0.3,
        eval_every=6,
        share_prefix=share_prefix,
        # The project's loop also holds ordinary dialogue in place (finetune/dpo_anchor.py).
        anchor_weight=1.0 if share_prefix else 0.0,
    )
    anchor = anchor_records(write_spc(tmp_path / "spc.csv", rows=5), 4) if share_prefix else []
    result = train_dpo(
        card,
        start_adapter=goku.adapter_path,
        pairs=pairs,
        out_dir=out,
        recipe=recipe,
        config=config,
        work_dir=tmp_path / "work",
        anchor_records=anchor,
        progress=False,
    )
    assert result.eval_pairs == 4 and result.train_pairs == 8
    assert result.eval_after["loss"] < result.eval_before["loss"]
    assert result.eval_after["rewards/accuracies"] > result.eval_before["rewards/accuracies"]
    assert result.eval_after["rewards/accuracies"] >= 0.75
    # Written like SFT's adapter: weights, its card, curves, and the SFT card it started from.
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "TRAINING.md"} <= names
    assert {"training.json", "dpo_curve.png", "sft"} <= names
    facts = json.loads((out / "training.json").read_text())
    assert facts["method"] == "dpo" and facts["pairs_by_source"] == {"rule": 12}
    assert any("loss" in point for point in facts["curve"])
    trained = [point for point in facts["curve"] if "loss" in point]
    assert all(("anchor_kl" in point) == share_prefix for point in trained)
    assert "SFT, then DPO" in (out / "TRAINING.md").read_text()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        config.model.base
    )


def test_synth_writes_rule_and_contrast_pairs_with_a_card(goku, config, tmp_path):
    """On the embedded model, with Goku's own adapter and Light's as the other in the cast."""
    from finetune.preferences import run_synth
    from finetune.synthesize import SynthOptions

    registry = CharacterRegistry.load(PROJECT_ROOT / "characters")
    # Two rules (a guarded one with a word mend, and the identity rule with the AI guard's
    # challenges), one training example each: the questions (and the test's minutes) stay few.
    rules = [
        r.model_copy(update={"training_examples": r.training_examples[:1]})
        for r in (goku.rules[ZENO], goku.rules[IDENTITY])
    ]
    small = goku.model_copy(update={"rules": rules})
    cast = CharacterRegistry([small, registry.get("light")])
    options = SynthOptions(contexts=1, samples=2, contrast=3, topic_messages=1, max_new_tokens=24)
    out = tmp_path / "synthetic.jsonl"
    result, path = run_synth(config, cast, small, options, out)
    assert path == out
    pairs = read_pairs(out, "goku")
    assert pairs == result.pairs
    by_source = {s: [p for p in pairs if p.source == s] for s in ("rule", "mend", "contrast")}
    contrast = by_source["contrast"]
    assert 1 <= len(contrast) <= 3 and all(p.detail == "light answered" for p in contrast)
    # Every rejected rule answer breaks its rule's guard; every chosen one breaks none; a mend
    # pair's chosen answer is its rejected one mended.
    for pair in by_source["rule"] + by_source["mend"]:
        index = next((i for i, r in enumerate(small.rules) if r.rule == pair.detail), None)
        message = pair.prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
        prompt = RulePrompt(index, pair.detail, message, pair.prompt, ("User",), ())
        assert judge(small, prompt, pair.rejected) == "broke"
        assert judge(small, prompt, pair.chosen) == "passed"
        if pair.source == "mend":
            assert mended(small, prompt, pair.rejected) == pair.chosen
    assert by_source["mend"] and result.mends["mended"] == len(by_source["mend"])
    assert sum(result.samples.values()) > 0
    card = out.with_suffix(".md").read_text()
    assert f"- pairs: {len(pairs)} over" in card
    assert f"- contrast: {len(contrast)}" in card
    assert f"- mend: {len(by_source['mend'])}" in card
    assert "samples that broke the rule's guard" in card
    assert f"own answers that broke their rule, mended: {len(by_source['mend'])}" in card

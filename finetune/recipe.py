"""A training recipe: every LoRA and optimisation setting, validated, loadable from YAML.

The seed report's settings are one file away (see `finetune/recipes/seed-report.yaml`):

    r: 4
    alpha: 8
    dropout: 0.05
    target_modules: [q_proj, v_proj]
    epochs: 3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.config import describe_validation_error
from finetune.errors import FinetuneError
from finetune.preference_data import SOURCES


class RecipeError(FinetuneError):
    """A recipe that cannot be used; the message names the key, the value and what is allowed."""


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # LoRA
    r: int = Field(8, ge=1, le=256)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    # How long: epochs, or a fixed number of optimizer steps when max_steps is set
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1)
    # Optimisation
    learning_rate: float = Field(3e-4, gt=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(5, ge=0)  # capped below the run's total steps
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # Sequences: the prompt is built within max_seq_len minus the reply's tokens
    max_seq_len: int = Field(1536, ge=64)
    # Evaluation, early stopping, checkpoints
    eval_every: int = Field(20, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    seed: int = 0
    # All examples of a character start with the same card (system message and few-shot
    # examples): compute it once per step instead of once per example. The forward pass is
    # exact; the gradient skips the adapter's effect on the card's keys and values.
    share_prefix: bool = True
    # Re-run the shared prefix every N steps (1: every step, exact). Between refreshes its
    # keys/values lag the adapter by a few small updates; evaluation always re-runs it.
    prefix_refresh_every: int = Field(4, ge=1)


class DpoRecipe(BaseModel):
    """Preference training (DPO) of an existing adapter: its LoRA shape is the adapter's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: float = Field(2, gt=0)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(5e-5, gt=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(2, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1)  # pairs per micro-batch
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # Prompt + reply tokens (the prompt budget is 1536); longer pairs are left out, not cut.
    max_seq_len: int = Field(2048, ge=64)
    # How far the policy may move from the reference (the adapter it starts from): DPO's beta.
    beta: float = Field(0.1, gt=0)
    # Weight of an SFT term (the chosen reply's NLL) added to the DPO loss, as in RPO: it keeps
    # the chosen replies likely instead of only more likely than the rejected ones (0: DPO only).
    sft_weight: float = Field(0.0, ge=0)
    # The pairs whose chosen reply gets that SFT term (None: every pair, as trl does). The
    # project's loop only: e.g. [contrast] anchors the adapter on the character's real lines
    # without making it recite the rules' few example answers.
    sft_sources: list[str] | None = None
    # Weight of a KL term that holds the adapter's ordinary conversation (Synthetic-Persona-Chat
    # training turns) where the reference had it (finetune/dpo_anchor.py; 0: none), and how
    # many such turns (one per dialogue). The project's loop only.
    anchor_weight: float = Field(0.0, ge=0)
    anchor_turns: int = Field(128, ge=1)
    # The project's own loop with the card prefix run once (finetune/dpo_shared.py) instead of
    # trl's DPOTrainer: far faster on a CPU, but no gradient through the prefix.
    share_prefix: bool = False
    eval_fraction: float = Field(0.15, ge=0, lt=1)  # pairs held out for reward accuracy
    eval_every: int = Field(10, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check_sft_sources(self) -> DpoRecipe:
        unknown = [s for s in self.sft_sources or () if s not in SOURCES]
        if unknown:
            raise ValueError(
                f"sft_sources: {', '.join(unknown)} is not a source; allowed: {', '.join(SOURCES)}"
            )
        if self.sft_sources is not None and not self.share_prefix:
            raise ValueError(
                "sft_sources needs share_prefix: true (trl's SFT term covers every pair)"
            )
        if self.anchor_weight and not self.share_prefix:
            raise ValueError("anchor_weight needs share_prefix: true (trl's loss has no anchor)")
        return self


RecipeType = type[Recipe] | type[DpoRecipe]


def load_recipe(path: Path | None = None, kind: RecipeType = Recipe, **overrides: Any) -> Any:
    """The recipe from a YAML file (or the defaults), with command-line overrides on top.
    An override that `kind` has no setting for is an error (e.g. `--r` when training DPO)."""
    data: dict[str, Any] = {}
    source = "recipe"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of settings, e.g. `r: 8`")
    given = {k: v for k, v in overrides.items() if v is not None}
    foreign = sorted(set(given) - set(kind.model_fields))
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        keys = ", ".join(kind.model_fields)
        raise RecipeError(f"{flags}: not a setting of {kind.__name__}; allowed: {keys}")
    data.update(given)
    try:
        return kind(**data)
    except ValidationError as exc:
        keys = ", ".join(kind.model_fields)
        raise RecipeError(
            describe_validation_error(exc, source, keys_hint=f"allowed keys: {keys}")
        ) from None

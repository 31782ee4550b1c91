"""The dataset card of a build: what went in, what came out, what was dropped and why.

`dataset_card.json` holds the figures (`card_data`); `dataset_card.md` shows them to a person
(`card_markdown`). Both are written beside train.jsonl and eval.jsonl by `finetune build`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from finetune.sources import Dropped

SAMPLES_PER_REASON = 5


def dropped_summary(dropped: Sequence[Dropped]) -> dict[str, dict[str, Any]]:
    """Reason -> count and a few samples, most frequent reason first."""
    by_reason: dict[str, list[Dropped]] = defaultdict(list)
    for d in dropped:
        by_reason[d.reason].append(d)
    return {
        reason: {"count": len(items), "samples": [_sample(d) for d in items[:SAMPLES_PER_REASON]]}
        for reason, items in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
    }


def _sample(d: Dropped) -> str:
    text = " ".join(d.text.split())
    text = text[:100] + ("…" if len(text) > 100 else "")
    return f"{d.source}:{d.line}: {text}".replace("`", "'")


def split_warnings(
    train: int, eval_: int, groups: int, eval_fraction: float, scenes: int
) -> list[str]:
    """What is wrong with a split a person should know before training on it.

    `groups`: the scene groups that hold the character's examples. The split aims at
    eval_fraction of the examples (`scene_examples.eval_groups`) but holds out whole groups, so
    it misses when the groups are few or large: a share over twice the fraction (and 10 points
    over it) or, from 20 examples, under half of it is named."""
    if eval_fraction == 0:
        return []
    if groups < 2:
        return [
            f"eval.jsonl is empty: every example comes from one of {scenes} scenes, and a scene "
            "is never split; give the source scene markers (or a smaller --scene-speeches for "
            "plain transcripts) so that a share of whole scenes can be held out"
        ]
    total = train + eval_
    share = eval_ / total
    if eval_ > train or share > max(2 * eval_fraction, eval_fraction + 0.1):
        return [
            f"lopsided split: eval.jsonl holds {eval_} of {total} examples ({share:.0%}) for an "
            f"eval fraction of {eval_fraction:.0%}: the {groups} scene groups the character "
            "speaks in are too few or too large to hold out a share near it; more, shorter "
            "scenes (markers, --scene-speeches) give a split near the fraction"
        ]
    if total >= 20 and share < eval_fraction / 2:
        return [
            f"lopsided split: eval.jsonl holds only {eval_} of {total} examples ({share:.0%}) for "
            f"an eval fraction of {eval_fraction:.0%}: the {groups} scene groups the character "
            "speaks in are too large to hold out a share near it; the eval loss will be noisy"
        ]
    return []


def card_markdown(card: dict[str, Any]) -> str:
    out = [
        f"# Dataset card: {card['character']['name']} ({card['character']['id']})",
        "",
        f"Built by `python -m finetune build`; {card['examples']['train']} training and "
        f"{card['examples']['eval']} evaluation examples from {card['scenes']} scenes "
        f"({card['split']['eval_groups']} of the {card['split']['groups']} scene groups the "
        "character speaks in held out for eval, "
        f"eval fraction {card['options']['eval_fraction']}, seed {card['options']['seed']}).",
        "",
    ]
    if card["warnings"]:
        out += ["## Warnings", "", *(f"- {warning}" for warning in card["warnings"]), ""]
    out += [
        "## Sources",
        "",
        "| source | kind | dialogue lines | file lines |",
        "|---|---|---|---|",
    ]
    for source in card["sources"]:
        cells = (f"`{source['path']}`", source["kind"], source["lines"], source["file_lines"])
        out.append("| " + " | ".join(map(str, cells)) + " |")
    out += [
        "",
        "## Lines per speaker (after cleaning)",
        "",
        f"{len(card['speakers'])} speakers found.",
        "",
        "| speaker | lines |",
        "|---|---|",
    ]
    out += [f"| {name} | {count} |" for name, count in list(card["speakers"].items())[:30]]
    if len(card["speakers"]) > 30:
        out.append(f"| ({len(card['speakers']) - 30} more) | |")
    out += [
        "",
        "## Examples",
        "",
        f"- character lines: {card['character_lines']}",
        f"- examples before filtering: {card['examples']['candidates']}",
        f"- train: {card['examples']['train']}, eval: {card['examples']['eval']}",
    ]
    if card.get("tokens"):
        out += [f"- {key.replace('_', ' ')}: {value}" for key, value in card["tokens"].items()]
    out += ["", "## Dropped", ""]
    if not card["dropped"]:
        out.append("Nothing was dropped.")
    for reason, entry in card["dropped"].items():
        out.append(f"- **{reason}**: {entry['count']}")
        out += [f"  - `{sample}`" for sample in entry["samples"]]
    out += ["", "## Options", "", "```json", json.dumps(card["options"], indent=2), "```", ""]
    return "\n".join(out)

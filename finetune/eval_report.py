"""The persona report's files: report.md, report.json and the charts (`python -m finetune eval`,
whose figures `finetune/evaluate.py` computes), and the bootstrap intervals of its headline.

The report code takes the set-ups from `report["setups"]`; the one it names is REFERENCE_SETUP,
the card with its example dialogues that the other set-ups' attribution accuracy is compared
with.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune import metrics
from finetune.eval_lore import lore_markdown

# The sections on Synthetic-Persona-Chat dialogues, as the report names them.
PERSONA_CHAT_SECTIONS = {
    "damage_guard": "Damage guard (Synthetic-Persona-Chat perplexity under each adapter)",
    "persona_chat": "Synthetic-Persona-Chat persona-injection protocol",
}
# Synthetic-Persona-Chat: no persona, the persona as the card, and that with the adapter
# trained on other dialogues (`python -m finetune train-persona-chat`).
PERSONA_SETUPS = ("base", "persona", "persona_adapter")

# A figure with nothing to measure (no rule probes): not a 0 pass rate.
NOT_MEASURED = "n/a"

# What the bot sends without an adapter: targets are stated as "N points above" it.
REFERENCE_SETUP = "card_few_shot"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95

# report["outcomes"][measure][setup][character]: 1/0 per item, in item order.
Outcomes = dict[str, dict[str, dict[str, list[int]]]]


# -- bootstrap intervals ---------------------------------------------------------------------


def _interval(outcomes: list[int]) -> list[float] | None:
    low, high = metrics.bootstrap_interval(
        outcomes, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, level=BOOTSTRAP_LEVEL
    )
    return None if math.isnan(low) else [low, high]


def paired_difference(a: list[int], b: list[int]) -> dict[str, Any]:
    """mean(b) - mean(a) over the same items, and its paired percentile-bootstrap interval (the
    same items resampled for both; null without items)."""
    if not a:
        return {"difference": None, "interval": None}
    low, high = metrics.bootstrap_difference(
        a, b, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, level=BOOTSTRAP_LEVEL
    )
    return {"difference": sum(b) / len(b) - sum(a) / len(a), "interval": [low, high]}


def _pooled(by_character: dict[str, list[int]], order: list[str]) -> list[int]:
    """Every character's outcomes, characters in `order` (so two set-ups' items pair up)."""
    return [value for c in order for value in by_character.get(c, [])]


def confidence_intervals(outcomes: Outcomes) -> dict[str, Any]:
    """Percentile-bootstrap intervals from per-item outcomes (`report["outcomes"]`).

    Per measure (attribution, probes) and set-up: over all characters' items pooled ("all",
    null without items) and per character; and, for attribution, each set-up's paired
    difference from REFERENCE_SETUP (the same items resampled for both).
    """
    intervals: dict[str, Any] = {
        "method": "percentile bootstrap of the mean over items",
        "level": BOOTSTRAP_LEVEL,
        "resamples": BOOTSTRAP_RESAMPLES,
        "seed": BOOTSTRAP_SEED,
    }
    for measure, setups in outcomes.items():
        intervals[measure] = {
            setup: {
                "all": _interval(_pooled(by_character, list(by_character))),
                "per_character": {c: _interval(v) for c, v in by_character.items()},
            }
            for setup, by_character in setups.items()
        }
    attribution = outcomes.get("attribution", {})
    if REFERENCE_SETUP in attribution:
        order = list(attribution[REFERENCE_SETUP])
        reference = _pooled(attribution[REFERENCE_SETUP], order)
        by_setup: dict[str, Any] = {}
        for setup, by_character in attribution.items():
            if setup == REFERENCE_SETUP or not reference:
                continue
            by_setup[setup] = paired_difference(reference, _pooled(by_character, order))
        intervals["attribution_vs_reference"] = {"reference": REFERENCE_SETUP, "by_setup": by_setup}
    return intervals


def _interval_of(
    report: dict[str, Any], measure: str, setup: str, character: str | None = None
) -> list[float] | None:
    """The interval report.json holds for a figure; None if it holds none (an older report)."""
    figures = report.get("intervals", {}).get(measure, {}).get(setup)
    if figures is None:
        return None
    return figures["all"] if character is None else figures["per_character"].get(character)


def _with_interval(value: Any, interval: list[float] | None, *, compact: bool = False) -> Any:
    """`0.59 [0.45, 0.72]`, or compact `0.59 [.45, .72]`; the value alone without interval."""
    if interval is None or not isinstance(value, float):
        return value
    low, high = (f"{bound:.2f}" for bound in interval)
    if compact:
        low, high = (b[1:] if b.startswith("0.") else b for b in (low, high))
    return f"{value:.2f} [{low}, {high}]"


def _difference_cell(report: dict[str, Any], setup: str) -> str:
    if setup == REFERENCE_SETUP:
        return "(reference)"
    figure = report["intervals"]["attribution_vs_reference"]["by_setup"].get(setup)
    if figure is None:
        return NOT_MEASURED
    low, high = figure["interval"]
    return f"{figure['difference']:+.2f} [{low:+.2f}, {high:+.2f}]"


def _interval_note(report: dict[str, Any], *, difference: bool) -> str:
    intervals = report["intervals"]
    note = (
        f"Brackets: {intervals['level']:.0%} intervals, percentile bootstrap of the mean over "
        f"items ({intervals['resamples']} resamples, seed {intervals['seed']}): attribution over "
        "the held-out prompts, rule probes over all probes pooled (the rule-probe figure is the "
        "mean of the characters' pass rates)."
    )
    if difference:
        note += (
            f" `vs {REFERENCE_SETUP}`: attribution accuracy minus {REFERENCE_SETUP}'s, its "
            "interval a paired bootstrap (the same prompts resampled for both set-ups)."
        )
    return note


# -- report.md -------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_table(report: dict[str, Any]) -> str:
    """Per set-up: attribution accuracy, rule probes, ROUGE-L and MiniLM similarity, with
    intervals and the difference from REFERENCE_SETUP when the report holds them."""
    difference = (
        "intervals" in report
        and "attribution_vs_reference" in report["intervals"]
        and REFERENCE_SETUP in report["setups"]
    )
    rows = []
    for setup in report["setups"]:
        probes = report["probes"][setup]
        row = [
            setup,
            _with_interval(
                report["attribution"][setup]["accuracy"], _interval_of(report, "attribution", setup)
            ),
            _with_interval(
                sum(probes.values()) / len(probes) if probes else NOT_MEASURED,
                _interval_of(report, "probes", setup),
            ),
            sum(r["rouge_l"] for r in report["reference"][setup].values())
            / len(report["characters"]),
            sum(r["similarity"] for r in report["reference"][setup].values())
            / len(report["characters"]),
        ]
        if difference:
            row.insert(2, _difference_cell(report, setup))
        rows.append(row)
    header = ["set-up", "attribution acc.", "rule probes", "ROUGE-L", "MiniLM sim."]
    if difference:
        header.insert(2, f"vs {REFERENCE_SETUP}")
    table = _table(header, rows)
    if "intervals" in report:
        table += "\n\n" + _interval_note(report, difference=difference)
    hits = report["likelihood"]["own_adapter_hits_at_1"]
    return f"{table}\n\nOwn adapter fits its character's held-out lines best (hits@1): {hits:.2f}"


def _per_character_table(
    report: dict[str, Any], metric: str, rate: Callable[[str, str], Any]
) -> str:
    """Set-ups x characters: `rate(setup, character)` with its interval from `metric`."""
    ids = report["characters"]
    rows = [
        [
            s,
            *(
                _with_interval(rate(s, c), _interval_of(report, metric, s, c), compact=True)
                for c in ids
            ),
        ]
        for s in report["setups"]
    ]
    return _table(["set-up", *ids], rows)


def _guard_actions_section(report: dict[str, Any]) -> list[str]:
    """How often the lever set-ups' guards stepped in: the probe pass rates count a fallback
    answer (the rule's own example) as a pass, so the report says how many there were."""
    actions = report.get("guard_actions")
    if not actions:
        return []
    rows = [[setup, a["answers"], a["resampled"], a["fallback"]] for setup, a in actions.items()]
    return [
        "## Rule guards at work (all answers: held-out prompts and probes)\n",
        "A reply that breaks a guard is sampled once more (resampled); if that breaks one too, "
        "the rule's example answer closest to the message, or a card fallback line, is given "
        "(fallback).\n",
        _table(["set-up", "answers", "resampled", "fallback"], rows) + "\n",
    ]


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = report["characters"]
    charts(report, out_dir)
    ppl = report["likelihood"]["perplexity"]
    parts = [
        "# Persona-fidelity report\n",
        "Regenerate with `python -m finetune eval` (see the module docstring of "
        "`finetune/evaluate.py` for the set-ups). Greedy decoding, seeded; levers_candidates and "
        "levers_all sample 4 candidates each (temperature from config.yaml), seeded. The "
        "attribution judge (MiniLM + logistic regression) is not part of any set-up: candidates "
        "are picked by the model's own likelihood ratio.\n",
        "## Headline\n",
        headline_table(report) + "\n",
        "![attribution](attribution.png)\n",
        "## Attribution accuracy per character\n",
        _per_character_table(
            report, "attribution", lambda s, c: report["attribution"][s]["per_character"][c]
        )
        + "\n",
        "![confusion](confusion.png)\n",
        *_guard_actions_section(report),
        "## Rule probes (pass rate)\n",
        _per_character_table(
            report, "probes", lambda s, c: report["probes"][s].get(c, NOT_MEASURED)
        )
        + "\n",
        *([lore_markdown(report["lore"])] if "lore" in report else []),
        "## Held-out lines: perplexity under each adapter (rows: whose lines)\n",
        _table(
            ["lines of", *ids, "base"],
            [[c, *(ppl[c][a] for a in ids), ppl[c]["base"]] for c in ids],
        )
        + "\n",
        "## Reference metrics (held-out replies)\n",
        _table(
            ["set-up", "character", "BLEU", "ROUGE-L", "MiniLM sim.", "distinct-1", "distinct-2"],
            [[s, c, *report["reference"][s][c].values()] for s in report["setups"] for c in ids],
        )
        + "\n",
    ]
    if report.get("skipped"):
        parts.append("## Skipped sections\n")
        parts += [
            f"- {PERSONA_CHAT_SECTIONS.get(section, section)}: skipped: {reason}"
            for section, reason in report["skipped"].items()
        ]
        parts.append("")
    if "damage_guard" in report:
        guard = report["damage_guard"]
        parts += [
            "## Damage guard: Synthetic-Persona-Chat perplexity (persona as the card)\n",
            "User 2's middle turn of held-out dialogues under each character's adapter: an "
            "adapter that broke general dialogue would score worse than the base.\n",
            _table(
                ["adapter", "perplexity"], [[k, v] for k, v in guard.items() if k != "dialogues"]
            )
            + f"\n\n{guard['dialogues']} dialogues.\n",
        ]
    if "persona_chat" in report:
        spc = report["persona_chat"]
        setups = [s for s in PERSONA_SETUPS if s in spc]
        parts += [
            "## Synthetic-Persona-Chat: the persona-injection protocol\n",
            f"User 2's middle turn of {spc['dialogues']} held-out dialogues, given up to 4 "
            "turns of context: "
            "`base` without a persona, `persona` with User 2's persona as the card, "
            "`persona_adapter` with that and the adapter `python -m finetune train-persona-chat` "
            "trained on other dialogues. hits@1: the real turn ranked first among "
            f"{spc['candidates']} candidates (the others are User 2 turns of other held-out "
            "dialogues) by mean loss per token.\n",
            _table(
                ["set-up", "BLEU", "ROUGE-L", "MiniLM sim.", "hits@1"],
                [
                    [s, *(spc[s][k] for k in ("bleu", "rouge_l", "similarity", "hits_at_1"))]
                    for s in setups
                ],
            )
            + "\n",
        ]
        for sample in spc["samples"]:
            parts.append(f"User 1: {sample['context']}\n")
            parts.append(f"- real: {sample['gold']}")
            parts += [f"- {s}: {sample[s]}" for s in setups]
            parts.append("")
    parts.append("## Sample answers\n")
    for sample in report["samples"]:
        parts.append(f"**{sample['character']}** ← {sample['prompt']}\n")
        for setup in report["setups"]:
            parts.append(f"- {setup}: {sample.get(setup, '')}")
        parts.append("")
    _write(out_dir / "report.md", "\n".join(parts) + "\n")
    _write(out_dir / "report.json", json.dumps(report, indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- charts ----------------------------------------------------------------------------------


def charts(report: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids, setups = report["characters"], report["setups"]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    width = 0.8 / len(setups)
    for i, setup in enumerate(setups):
        values = [report["attribution"][setup]["per_character"][c] for c in ids]
        ax.bar([x + i * width for x in range(len(ids))], values, width, label=setup)
    ax.set_xticks([x + width * (len(setups) - 1) / 2 for x in range(len(ids))], ids)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attribution accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "attribution.png")
    plt.close(fig)

    # The reference set-up's confusion beside the last set-up's (the newest one).
    shown = list(dict.fromkeys(s for s in (REFERENCE_SETUP, setups[-1]) if s in setups))
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.8), dpi=100, squeeze=False)
    for ax, setup in zip(axes[0], shown, strict=True):
        matrix = report["attribution"][setup]["confusion"]
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(ids)), ids, rotation=45)
        ax.set_yticks(range(len(ids)), ids)
        ax.set_xlabel("predicted")
        ax.set_ylabel("speaker")
        ax.set_title(setup)
        for r, row in enumerate(matrix):
            for c, value in enumerate(row):
                ax.text(c, r, str(value), ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png")
    plt.close(fig)

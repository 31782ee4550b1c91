"""adapters.md and adapters.json of `python -m finetune eval-adapters` (figures from
finetune/eval_adapters.py): the headline, one table per section, how it was measured."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bot.files import write_files_atomically
from finetune.eval_report import NOT_MEASURED, _table, _with_interval

VERSIONS = ("before", "after")
DAMAGE_TARGET = 1.05  # SPC perplexity after/before: DPO may cost at most 5%


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_MEASURED
    return f"{value:.{digits}f}"


def _rate(figures: dict[str, Any], version: str, *, compact: bool = False) -> Any:
    value = figures.get(version)
    if value is None:
        return NOT_MEASURED
    return _with_interval(float(value), figures.get(f"{version}_interval"), compact=compact)


def _difference(figures: dict[str, Any]) -> str:
    figure = figures.get("after_minus_before") or {}
    if figure.get("difference") is None:
        return NOT_MEASURED
    low, high = figure["interval"]
    return f"{figure['difference']:+.2f} [{low:+.2f}, {high:+.2f}]"


def _damage_ratio(report: dict[str, Any], c: str) -> str:
    if "damage_guard" not in report:
        return "skipped"
    figures = report["damage_guard"]["per_character"][c]
    mark = "" if figures["within_target"] else " (over target)"
    return f"{figures['after_over_before']:.3f}{mark}"


def headline_table(report: dict[str, Any]) -> str:
    """Per character: probes, attribution (and its after - before), held-out perplexity and
    the SPC damage ratio, before -> after."""
    rows = []
    for c in report["characters"]:
        probes = report["probes"][c]
        attribution = report["attribution"]["per_character"][c]
        likelihood = report["likelihood"]["per_character"][c]
        rows.append(
            [
                c,
                probes.get("note") or _rate(probes, "before", compact=True),
                probes.get("note") or _rate(probes, "after", compact=True),
                _rate(attribution, "before", compact=True),
                _rate(attribution, "after", compact=True),
                _difference(attribution),
                _number(likelihood.get("before")),
                _number(likelihood.get("after")),
                _damage_ratio(report, c),
            ]
        )
    header = [
        "character",
        "probes before",
        "probes after",
        "attribution before",
        "attribution after",
        "attribution after - before",
        "held-out ppl before",
        "held-out ppl after",
        f"SPC ppl after/before (target <= {DAMAGE_TARGET})",
    ]
    return _table(header, rows)


def how_measured(report: dict[str, Any]) -> str:
    options = report["options"]
    intervals = report["intervals"]
    others = report["likelihood"]["after_uses_before"]
    keep = (
        f" ({', '.join(others)}, not compared, took part with the before adapter)" if others else ""
    )
    return (
        f"Each character is run with `characters/<id>/{report['before']}` (before) and "
        f"`characters/<id>/{report['after']}` (after) on the same prompts, as "
        "`python -m finetune eval`'s card_adapter set-up: the full card, greedy decoding "
        f"(at most {options['max_new_tokens']} new tokens, seed {options['seed']}), the bot's "
        "reply cleaning, no rule guards. Rule probes: the character's probes.yaml questions, "
        "passed if the answer matches its regexes. Attribution: the report's MiniLM + "
        f"logistic-regression judge, trained on the training lines of the cast "
        f"({', '.join(report['cast'])}), names who said each answer to up to "
        f"{options['prompts']} held-out prompts per character. Brackets: "
        f"{intervals['level']:.0%} percentile-bootstrap intervals over items "
        f"({intervals['resamples']} resamples, seed {intervals['seed']}); after - before is a "
        "paired bootstrap (the same items resampled for both). Held-out likelihood: perplexity "
        f"of up to {options['likelihood_lines']} of the character's held-out lines (prompted "
        "as in training); own-adapter hits@1 is the share of the cast whose lines fit their "
        f"own adapter best among the cast's before adapters, then among the after ones{keep}. "
        "Damage guard: perplexity of a User 2 turn of "
        f"{options['spc_dialogues']} held-out Synthetic-Persona-Chat dialogues (persona as "
        f"the card) with each adapter; DPO's target is after/before <= {DAMAGE_TARGET}."
    )


def _rate_row(name: str, count: object, figures: dict[str, Any]) -> list[Any]:
    """One row of a pass-rate table: before, after and the paired difference, or the note
    that says why there is none."""
    if "note" in figures:
        return [name, count, figures["note"], "", ""]
    return [name, count, _rate(figures, "before"), _rate(figures, "after"), _difference(figures)]


def _probes_table(report: dict[str, Any]) -> str:
    rows = []
    for c in report["characters"]:
        figures = report["probes"][c]
        answered = 0 if "note" in figures else figures["probes"]
        rows.append(_rate_row(c, f"{answered} of {figures['of']}", figures))
    return _table(["character", "probes", "before", "after", "after - before"], rows)


def _attribution_table(report: dict[str, Any]) -> str:
    section = report["attribution"]
    rows = []
    for c in report["characters"]:
        figures = section["per_character"][c]
        rows.append(_rate_row(c, figures.get("prompts", 0), figures))
    pooled = section["all"]
    rows.append(_rate_row("all", pooled["prompts"], pooled))
    return _table(["character", "prompts", "before", "after", "after - before"], rows)


def _likelihood_table(report: dict[str, Any]) -> str:
    section = report["likelihood"]
    rows = []
    for c in report["characters"]:
        figures = section["per_character"][c]
        if "note" in figures:
            rows.append([c, 0, figures["note"], "", "", "", "", ""])
            continue
        rows.append(
            [
                c,
                figures["lines"],
                figures["base"],
                figures["before"],
                figures["after"],
                f"{figures['after_over_before']:.3f}",
                "yes" if figures["own_best_before"] else "no",
                "yes" if figures["own_best_after"] else "no",
            ]
        )
    header = [
        "character",
        "lines",
        "base",
        "before",
        "after",
        "after/before",
        "own adapter best (before cast)",
        "own adapter best (after cast)",
    ]
    hits = section["own_adapter_hits_at_1"]
    text = _table(header, rows)
    text += (
        f"\n\nOwn-adapter hits@1 within the cast ({', '.join(section['hits_rows'])}): "
        f"before adapters {_number(hits['before'])}, after adapters {_number(hits['after'])}."
    )
    if section["after_uses_before"]:
        kept = section["after_uses_before"]
        text += (
            f" In the after cast, {', '.join(kept)} (not compared here) "
            f"{'keeps its before adapter' if len(kept) == 1 else 'keep their before adapters'}."
        )
    return text


def _damage_guard_part(report: dict[str, Any]) -> list[str]:
    title = "## SPC damage guard (Synthetic-Persona-Chat perplexity)\n"
    if "damage_guard" not in report:
        return [title, f"Skipped: {report['skipped']['damage_guard']}\n"]
    guard = report["damage_guard"]
    rows = [
        [
            c,
            figures["before"],
            figures["after"],
            f"{figures['after_over_before']:.3f}",
            "yes" if figures["within_target"] else "no",
        ]
        for c, figures in guard["per_character"].items()
    ]
    table = _table(["character", "before", "after", "after/before", f"<= {guard['target']}"], rows)
    return [
        title,
        table + f"\n\nWithout an adapter: {guard['base']:.2f}; {guard['dialogues']} held-out "
        "dialogues.\n",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    parts = [
        f"# Adapters compared: {report['before']} (before) vs {report['after']} (after)\n",
        "Regenerate with `python -m finetune eval-adapters "
        f"{' '.join(report['characters'])} --before {report['before']} --after "
        f"{report['after']}`.\n",
        "## How measured\n",
        how_measured(report) + "\n",
        "## Headline\n",
        headline_table(report) + "\n",
        "## Rule probes without guards (pass rate)\n",
        _probes_table(report) + "\n",
        "## Attribution (share of held-out answers attributed to the right character)\n",
        _attribution_table(report) + "\n",
        "## Held-out likelihood (perplexity of the character's held-out lines)\n",
        _likelihood_table(report) + "\n",
        *_damage_guard_part(report),
        "## Sample answers\n",
    ]
    for sample in report["samples"]:
        parts.append(f"**{sample['character']}** ← {sample['prompt']}\n")
        parts += [f"- {version}: {sample.get(version, '')}" for version in VERSIONS]
        parts.append("")
    return "\n".join(parts) + "\n"


def write_adapter_report(report: dict[str, Any], out_dir: Path) -> None:
    """adapters.md and adapters.json into `out_dir`, both or neither."""
    write_files_atomically(
        {
            out_dir / "adapters.md": render_markdown(report),
            out_dir / "adapters.json": json.dumps(report, indent=2) + "\n",
        }
    )

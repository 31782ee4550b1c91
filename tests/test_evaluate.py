"""The persona report end to end on two small characters with random adapters."""

from __future__ import annotations

import json

from bot.characters import CharacterRegistry
from finetune.adapters import save_random_adapter
from finetune.evaluate import EvalOptions, run_eval, variant
from tests.helpers import make_character, write_character, write_spc


def write_split(folder, lines: list[tuple[str, str]]) -> None:
    data = folder / "data"
    (data / "sources").mkdir(parents=True)
    for name, part in (("train", lines[1:]), ("eval", lines[:1])):
        records = [
            {
                "id": f"{name}{i}",
                "context": [{"role": "user", "author": "Sam", "text": q}],
                "reply": a,
            }
            for i, (q, a) in enumerate(part)
        ]
        (data / f"{name}.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    probe = "- question: What is the launch code?\n  rule: secret\n  must_not_match: '\\d{4}'\n"
    (data / "sources" / "probes.yaml").write_text(probe)


def test_variants_strip_the_card_step_by_step():
    card = make_character()
    assert variant(card, "base").rules == [] and variant(card, "base").examples == []
    assert variant(card, "card_zero_shot").rules == card.rules
    assert variant(card, "card_zero_shot").examples == []
    assert variant(card, "card_adapter") == card


def test_report_is_written_with_every_section(tmp_path, config, engine):
    root = tmp_path / "characters"
    pilots = [("Ready to fly?", "Always ready!"), ("Fuel?", "Full tank!"), ("Sky?", "Clear!")]
    chefs = [("Hungry?", "Soup is ready."), ("Salt?", "A pinch."), ("Knife?", "Sharp.")]
    for ident, name, lines in (("tess", "Tess", pilots), ("remy", "Remy", chefs)):
        folder = write_character(root, id=ident, name=name, aliases=[])
        save_random_adapter(engine.model, folder / "adapter", seed=len(name))
        write_split(folder, lines)
    test_config = config.model_copy(update={"characters_dir": root})
    characters = list(CharacterRegistry.load(root))
    spc = write_spc(tmp_path / "spc.csv", rows=11)  # held out: rows 0, 5, 10
    persona_adapter = save_random_adapter(engine.model, tmp_path / "persona-chat", seed=3)
    options = EvalOptions(
        prompts=1,
        probes=1,
        likelihood_lines=1,
        spc_dialogues=2,
        candidates=4,
        max_new_tokens=6,
        batch_size=8,
    )
    report = run_eval(
        characters,
        config=test_config,
        out_dir=tmp_path / "report",
        options=options,
        spc_path=spc,
        persona_chat_adapter=persona_adapter,
    )

    ids = ["remy", "tess"]
    assert report["characters"] == ids
    outcomes, intervals = report["outcomes"], report["intervals"]
    for setup in report["setups"]:
        assert 0 <= report["attribution"][setup]["accuracy"] <= 1
        assert sum(map(sum, report["attribution"][setup]["confusion"])) == 2
        assert set(report["probes"][setup]) == set(ids)
        # The figures are the means of the per-item outcomes the intervals resample.
        right = outcomes["attribution"][setup]
        assert {c: len(right[c]) for c in ids} == {"remy": 1, "tess": 1}
        assert report["attribution"][setup]["accuracy"] == sum(right["remy"] + right["tess"]) / 2
        for c in ids:
            assert report["probes"][setup][c] == outcomes["probes"][setup][c][0]
            low, high = intervals["probes"][setup]["per_character"][c]
            assert low == high == report["probes"][setup][c]  # one probe: nothing to resample
        low, high = intervals["attribution"][setup]["all"]
        assert low <= report["attribution"][setup]["accuracy"] <= high
    assert set(intervals["attribution_vs_reference"]["by_setup"]) == set(report["setups"]) - {
        "card_few_shot"
    }
    assert set(report["likelihood"]["perplexity"]["tess"]) == {"remy", "tess", "base"}
    assert report["likelihood"]["own_adapter_hits_at_1"] in (0.0, 0.5, 1.0)
    assert set(report["damage_guard"]) == {"base", "remy", "tess", "dialogues"}
    assert report["damage_guard"]["dialogues"] == 2
    spc_report = report["persona_chat"]
    assert spc_report["dialogues"] == 2 and spc_report["candidates"] == 4
    for setup in ("base", "persona", "persona_adapter"):
        assert spc_report[setup]["hits_at_1"] in (0.0, 0.5, 1.0)
        assert 0 <= spc_report[setup]["rouge_l"] <= 1
    # The held-out rows' middle User 2 turns are the references; row 0 first.
    assert spc_report["samples"][0]["gold"] == "I have 0 goats (1)."
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "persona-injection protocol" in markdown and "| persona_adapter |" in markdown
    assert "## Headline" in markdown and "| card_adapter |" in markdown
    assert "| vs card_few_shot |" in markdown
    reference = next(line for line in markdown.splitlines() if line.startswith("| card_few_shot |"))
    assert "| (reference) |" in reference
    headline = next(line for line in markdown.splitlines() if line.startswith("| card_adapter |"))
    accuracy = report["attribution"]["card_adapter"]["accuracy"]
    assert headline.startswith(f"| card_adapter | {accuracy:.2f} [")
    # The serving levers answered every item through the bot's Responder.
    assert {"card_adapter_guards", "levers_candidates", "levers_guidance", "levers_all"} <= set(
        report["setups"]
    )
    for setup, actions in report["guard_actions"].items():
        assert actions["answers"] == 4, setup  # one prompt and one probe per character
    assert "## Rule guards at work" in markdown and "| levers_all |" in markdown
    assert "skipped" not in report and "Skipped sections" not in markdown
    for chart in ("attribution.png", "confusion.png"):
        assert (tmp_path / "report" / chart).stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "report.json").read_text())["characters"] == ids

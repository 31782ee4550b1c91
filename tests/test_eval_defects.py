"""`python -m finetune eval`'s input checks and report wording, without the model: the checks run
before any model work, so these tests forbid loading it."""

from __future__ import annotations

import json
import logging

import pytest

from bot.engine import loading
from finetune import evaluate
from finetune.attribution import train_attribution
from finetune.errors import FinetuneError
from finetune.eval_report import confidence_intervals, headline_table, write_report
from finetune.evaluate import PROMPT_SETUPS, SETUPS, EvalError, EvalOptions, pass_rates, run_eval
from tests.helpers import make_character, make_config


class ModelWork(Exception):
    """Raised where the run would load the model or the encoder."""


@pytest.fixture
def no_model(monkeypatch):
    def forbidden(*args, **kwargs):
        raise ModelWork

    monkeypatch.setattr(evaluate.InferenceEngine, "from_config", forbidden)
    monkeypatch.setattr(evaluate, "load_encoder", forbidden)


def characters_with_data(root, lines: dict[str, int]) -> list:
    """Characters with an adapter folder and `lines[id]` training and eval lines each."""
    characters = []
    for ident, count in lines.items():
        data = root / ident / "data"
        data.mkdir(parents=True)
        records = [
            {"context": [{"role": "user", "author": "Sam", "text": f"Hi {i}?"}], "reply": "Yo."}
            for i in range(count)
        ]
        for name in ("train", "eval"):
            (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        adapter = root / ident / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("{}")
        card = make_character(id=ident, name=ident.title(), aliases=[])
        characters.append(card.model_copy(update={"adapter_path": adapter}))
    return characters


def run(characters, root, tmp_path, spc_path=None):
    return run_eval(
        characters,
        config=make_config(characters_dir=str(root)),
        out_dir=tmp_path / "report",
        options=EvalOptions.quick(),
        spc_path=spc_path,
    )


# -- a. attribution needs two characters, checked before any model work ---------------------------


def test_one_character_is_refused_before_the_model_loads(tmp_path, no_model):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"goku": 3})
    with pytest.raises(EvalError, match=r"at least 2 characters.*got: goku"):
        run(characters, root, tmp_path)


def test_a_second_character_without_training_lines_is_refused_too(tmp_path, no_model):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"goku": 3, "vegeta": 0})
    with pytest.raises(EvalError, match=r"got: goku \(no training lines: vegeta\)"):
        run(characters, root, tmp_path)


def test_attribution_of_one_character_is_a_clear_error():
    # The check comes before any encoding: the encoder is never used.
    with pytest.raises(FinetuneError, match=r"at least two characters.*goku"):
        train_attribution(None, {"goku": ["Kamehameha!"], "vegeta": []})  # type: ignore[arg-type]


# -- b. no rule probes: n/a, not 0.00 -------------------------------------------------------------


def small_report(setups=SETUPS, **overrides) -> dict:
    """A report as run_eval returns it, for two characters and no Synthetic-Persona-Chat
    (without the intervals and their outcomes)."""
    ids = ["goku", "vegeta"]
    report = {
        "characters": ids,
        "setups": list(setups),
        "attribution": {
            s: {
                "accuracy": 0.5,
                "per_character": dict.fromkeys(ids, 0.5),
                "confusion": [[1, 0], [1, 0]],
            }
            for s in setups
        },
        "probes": {s: {} for s in setups},
        "reference": {
            s: {
                c: {
                    "bleu": 1.0,
                    "rouge_l": 0.1,
                    "similarity": 0.2,
                    "distinct_1": 0.9,
                    "distinct_2": 1.0,
                }
                for c in ids
            }
            for s in setups
        },
        "likelihood": {
            "perplexity": {c: {"goku": 9.0, "vegeta": 9.5, "base": 11.0} for c in ids},
            "own_adapter_hits_at_1": 0.5,
        },
        "samples": [],
    }
    return report | overrides


def test_headline_says_n_a_without_rule_probes():
    table = headline_table(small_report()).splitlines()
    rows = [line for line in table if line.startswith("| card_adapter |")]
    assert rows == ["| card_adapter | 0.50 | n/a | 0.10 | 0.20 |"]


def test_rule_probe_table_says_n_a_for_a_character_without_probes(tmp_path):
    report = small_report(probes={s: {"goku": 1.0} for s in SETUPS})
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "| card_adapter | 1.00 | n/a |" in markdown
    assert "| card_adapter | 0.50 | 1.00 |" in markdown  # the headline: goku's probes only


# -- intervals: bootstrap over items, in the headline and the per-character tables -------------


def test_the_report_shows_bootstrap_intervals_and_the_difference_from_card_with_examples(
    tmp_path,
):
    # The prompt set-ups and a lever set-up after them.
    setups = [*PROMPT_SETUPS, "levers_all"]
    attribution = {s: {"goku": [1, 0, 1, 0], "vegeta": [0, 1, 0, 1]} for s in setups}
    attribution["levers_all"] = {"goku": [1, 1, 1, 0], "vegeta": [1, 1, 1, 1]}
    probes = {s: {"goku": [1, 0]} for s in setups}
    report = small_report(setups, probes=pass_rates(probes))
    report["attribution"]["levers_all"] |= {
        "accuracy": 7 / 8,
        "per_character": {"goku": 0.75, "vegeta": 1.0},
    }
    report["intervals"] = confidence_intervals({"attribution": attribution, "probes": probes})

    vs = report["intervals"]["attribution_vs_reference"]
    assert vs["reference"] == "card_few_shot" and "card_few_shot" not in vs["by_setup"]
    assert vs["by_setup"]["levers_all"]["difference"] == pytest.approx(3 / 8)
    assert vs["by_setup"]["card_adapter"] == {"difference": 0.0, "interval": [0.0, 0.0]}
    assert report["intervals"]["probes"]["base"]["per_character"] == {"goku": [0.0, 1.0]}
    low, high = report["intervals"]["attribution"]["levers_all"]["all"]
    assert low < 7 / 8 < high == 1.0

    lines = headline_table(report).splitlines()
    assert lines[0] == (
        "| set-up | attribution acc. | vs card_few_shot | rule probes | ROUGE-L | MiniLM sim. |"
    )
    assert "| card_few_shot | 0.50 [0.12, 0.88] | (reference) | 0.50 [0.00, 1.00] |" in lines[4]
    assert "| card_adapter | 0.50 [0.12, 0.88] | +0.00 [+0.00, +0.00] |" in lines[6]
    assert lines[7].startswith(f"| levers_all | 0.88 [{low:.2f}, 1.00] | +0.38 [+0.")
    assert any("bootstrap" in line and "2000 resamples, seed 0" in line for line in lines)

    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "| levers_all | 0.75 [.25, 1.00] | 1.00 [1.00, 1.00] |" in markdown  # attribution
    assert "| levers_all | 0.50 [.00, 1.00] | n/a |" in markdown  # rule probes: vegeta has none
    assert json.loads((tmp_path / "report.json").read_text())["intervals"] == report["intervals"]


# -- c. skipped Synthetic-Persona-Chat sections are reported -------------------------------------


def test_a_missing_persona_chat_file_is_logged_before_the_model_loads(tmp_path, no_model, caplog):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"goku": 3, "vegeta": 3})
    missing = tmp_path / "nowhere" / "valid.csv"
    with caplog.at_level(logging.WARNING, logger="finetune.evaluate"), pytest.raises(ModelWork):
        run(characters, root, tmp_path, spc_path=missing)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped" in w and str(missing) in w for w in warnings), warnings


def test_the_report_says_which_sections_were_skipped_and_why(tmp_path):
    missing = tmp_path / "valid.csv"
    report = small_report(skipped=evaluate.skipped_persona_chat_sections(missing))
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    skipped = [line for line in markdown.splitlines() if "skipped" in line.lower()]
    assert any("Damage guard" in line and str(missing) in line for line in skipped), skipped
    assert any("persona-injection" in line and str(missing) in line for line in skipped), skipped


# -- d. bitsandbytes' optional-kernel notice is filtered, other messages are not ------------------


def test_the_bitsandbytes_kernel_notice_is_filtered_and_nothing_else(caplog):
    assert loading  # importing the engine's loading module installs the filter
    name = "bitsandbytes.backends.cpu.ops"  # where bitsandbytes logs it, as peft imports it
    with caplog.at_level(logging.DEBUG, logger=name):
        logging.getLogger(name).warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure "
            "you already `pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        logging.getLogger(name).warning("Failed to load the CPU library")
    assert [r.getMessage() for r in caplog.records] == ["Failed to load the CPU library"]

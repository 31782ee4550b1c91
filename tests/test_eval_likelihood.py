"""`python -m finetune eval --only likelihood` without the model (suggested for
tests/test_eval_defects.py, which has the same helpers and the no_model fixture)."""

from __future__ import annotations

import json

import pytest

from finetune import __main__ as cli
from finetune import evaluate
from finetune.evaluate import EvalError, EvalOptions, likelihood_table, run_likelihood
from tests.helpers import make_config
from tests.test_eval_defects import ModelWork, characters_with_data, no_model  # noqa: F401

SECTION = {
    "perplexity": {
        "anna": {"anna": 5.0, "bert": 7.0, "base": 9.0},
        "bert": {"anna": 6.0, "bert": 6.5, "base": 9.5},
    },
    "own_adapter_hits_at_1": 0.5,
}


def test_only_likelihood_refuses_one_character_before_the_model_loads(tmp_path, no_model):  # noqa: F811
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"anna": 3})
    config = make_config(characters_dir=str(root))
    with pytest.raises(EvalError, match="two or more characters"):
        run_likelihood(characters, config=config, options=EvalOptions.quick())


def test_only_likelihood_needs_adapters_before_the_model_loads(tmp_path, no_model):  # noqa: F811
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"anna": 3, "bert": 3})
    characters[1] = characters[1].model_copy(update={"adapter_path": None})
    config = make_config(characters_dir=str(root))
    with pytest.raises(EvalError, match="no adapter for bert"):
        run_likelihood(characters, config=config, options=EvalOptions.quick())


def test_only_likelihood_runs_that_section_alone_and_writes_its_json(tmp_path, monkeypatch, caplog):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"anna": 3, "bert": 3})
    calls = []

    def forbidden(*args, **kwargs):
        raise ModelWork

    monkeypatch.setattr(evaluate, "load_engine", lambda config, chars: "engine")
    monkeypatch.setattr(evaluate, "load_encoder", forbidden)  # no answers, no attribution
    monkeypatch.setattr(evaluate, "answer_all", forbidden)

    def section(engine, chars, root_, options):
        calls.append((engine, [c.id for c in chars], root_, options.likelihood_lines))
        return SECTION

    monkeypatch.setattr(evaluate, "likelihood_section", section)
    config = make_config(characters_dir=str(root))
    out = tmp_path / "out"
    got = run_likelihood(characters, config=config, options=EvalOptions(), out_dir=out)
    assert got == SECTION
    assert calls == [("engine", ["anna", "bert"], root, 20)]
    figures = json.loads((out / "likelihood.json").read_text())
    assert figures["characters"] == ["anna", "bert"]
    assert figures["likelihood_lines"] == 20
    assert figures["own_adapter_hits_at_1"] == 0.5
    assert "Synthetic-Persona-Chat" not in caplog.text  # no warning about skipped sections


def test_likelihood_table_is_the_report_table_and_hits():
    text = likelihood_table(SECTION, ["anna", "bert"])
    assert "| lines of | anna | bert | base |" in text
    assert "| anna | 5.00 | 7.00 | 9.00 |" in text
    assert text.endswith("(hits@1): 0.50")


def test_the_cli_flag_prints_the_table_and_writes_no_report(tmp_path, monkeypatch, capsys):
    root = tmp_path / "characters"
    characters_with_data(root, {"anna": 3, "bert": 3})
    for ident in ("anna", "bert"):
        (root / ident / "character.yaml").write_text(
            f"id: {ident}\nname: {ident.title()}\ndescription: x\ngreeting: hi\n"
        )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"characters_dir: {root}\n")
    monkeypatch.setenv("CHARBOT_CONFIG", str(config_file))
    seen = {}

    def fake_run(characters, *, config, options, out_dir):
        seen.update(ids=[c.id for c in characters], out=out_dir, lines=options.likelihood_lines)
        return SECTION

    monkeypatch.setattr(evaluate, "run_likelihood", fake_run)
    monkeypatch.setattr(evaluate, "run_eval", lambda *a, **k: pytest.fail("the whole report ran"))
    assert cli.main(["eval", "--only", "likelihood"]) == 0
    assert seen == {"ids": ["anna", "bert"], "out": None, "lines": 20}
    printed = capsys.readouterr().out
    assert "(hits@1): 0.50" in printed and "figures:" not in printed
    assert cli.main(["eval", "--only", "likelihood", "--quick", "--out", str(tmp_path)]) == 0
    assert seen["out"] == tmp_path and seen["lines"] == 2
    assert f"figures: {tmp_path / 'likelihood.json'}" in capsys.readouterr().out


def test_without_only_the_report_still_defaults_to_docs_report(monkeypatch):
    args = cli.parse_args(["eval"])
    assert args.only is None and args.out is None

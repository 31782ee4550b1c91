"""`python -m finetune eval-adapters`: its checks (before any model work), its report files from
fixed figures, and one small run on the embedded model with random adapters."""

from __future__ import annotations

import json
import shutil

import pytest

from bot.characters import CharacterRegistry
from finetune import __main__ as cli
from finetune import eval_adapters
from finetune.eval_adapters import (
    EvalAdaptersError,
    cast_of,
    default_options,
    run_eval_adapters,
)
from finetune.eval_adapters_report import headline_table, render_markdown, write_adapter_report
from finetune.evaluate import EvalOptions
from tests.helpers import make_config, write_character, write_spc
from tests.test_eval_defects import characters_with_data
from tests.test_evaluate import write_split


class ModelWork(Exception):
    """Raised where the run would load the model or the encoder."""


@pytest.fixture
def no_model(monkeypatch):
    def forbidden(*args, **kwargs):
        raise ModelWork

    monkeypatch.setattr(eval_adapters.InferenceEngine, "from_config", forbidden)
    monkeypatch.setattr(eval_adapters, "load_encoder", forbidden)


def with_after(root, ids, name="adapter-dpo"):
    for ident in ids:
        folder = root / ident / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")


def run(characters, root, tmp_path, **kwargs):
    return run_eval_adapters(
        characters,
        config=make_config(characters_dir=str(root)),
        out_dir=tmp_path / "out",
        options=EvalOptions.quick(),
        **kwargs,
    )


# -- checks before the model loads ---------------------------------------------------------------


def test_a_missing_after_folder_names_the_path_and_the_dpo_command(tmp_path, no_model):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"anna": 3, "bert": 3})
    with_after(root, ["anna"])
    with pytest.raises(EvalAdaptersError) as info:
        run(characters, root, tmp_path)
    message = str(info.value)
    assert str(root / "bert" / "adapter-dpo") in message
    assert "python -m finetune train bert --method dpo --out" in message


def test_a_missing_before_folder_names_the_sft_command(tmp_path, no_model):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"anna": 3, "bert": 3})
    with_after(root, ["anna", "bert"])
    with pytest.raises(EvalAdaptersError, match=r"adapter-v2: no such folder.*before") as info:
        run(characters, root, tmp_path, before="adapter-v2")
    assert f"`python -m finetune train anna --out {root / 'anna' / 'adapter-v2'}`" in str(
        info.value
    )


def test_a_folder_without_an_adapter_is_refused(tmp_path, no_model):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"anna": 3, "bert": 3})
    with_after(root, ["anna", "bert"])
    (root / "bert" / "adapter-dpo" / "adapter_config.json").unlink()
    with pytest.raises(EvalAdaptersError, match=r"adapter-dpo: not an adapter"):
        run(characters, root, tmp_path)


@pytest.mark.parametrize(
    ("before", "after", "match"),
    [
        ("adapter", "adapter", "two different adapter folders"),
        ("adapter", "../bert/adapter", "--after '../bert/adapter': give the name of a folder"),
        ("", "adapter-dpo", "--before '': give the name"),
    ],
)
def test_bad_folder_names_are_refused(tmp_path, no_model, before, after, match):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"anna": 3, "bert": 3})
    with pytest.raises(EvalAdaptersError, match=match):
        run(characters, root, tmp_path, before=before, after=after)


def test_one_character_without_a_cast_is_refused_before_the_model_loads(tmp_path, no_model):
    root = tmp_path / "characters"
    characters = characters_with_data(root, {"anna": 3})
    with_after(root, ["anna"])
    with pytest.raises(EvalAdaptersError, match=r"at least 2 characters.*got: anna"):
        run(characters, root, tmp_path)


def test_the_cast_adds_others_with_a_before_adapter_and_data(tmp_path, no_model):
    root = tmp_path / "characters"
    anna, bert, cleo = characters_with_data(root, {"anna": 3, "bert": 3, "cleo": 3})
    shutil.rmtree(root / "cleo" / "adapter")  # no before adapter: not in the cast
    dora = characters_with_data(root, {"dora": 0})[0]
    (root / "dora" / "data" / "eval.jsonl").unlink()  # no data: left out, not an error
    cast = cast_of([bert], [dora, cleo, bert, anna], root, "adapter")
    assert [c.id for c in cast] == ["bert", "anna"]
    # With the cast the judge has two characters, so the run gets as far as the model.
    with_after(root, ["bert"])
    with pytest.raises(ModelWork):
        run([bert], root, tmp_path, others=[anna, cleo, dora])


def test_the_cli_reports_a_missing_folder_as_an_error(tmp_path, monkeypatch, capsys, no_model):
    root = tmp_path / "characters"
    characters_with_data(root, {"anna": 3, "bert": 3})
    for ident in ("anna", "bert"):
        (root / ident / "character.yaml").write_text(
            f"id: {ident}\nname: {ident.title()}\ndescription: x\ngreeting: hi\n"
        )
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"characters_dir: {root}\n")
    monkeypatch.setenv("CHARBOT_CONFIG", str(config_file))
    assert cli.main(["eval-adapters", "anna", "bert", "--after", "adapter-x"]) == 2
    assert f"{root / 'anna' / 'adapter-x'}: no such folder" in capsys.readouterr().err
    # Without ids: the characters that have both folders, none here.
    assert cli.main(["eval-adapters"]) == 2
    assert "no character has both adapter/ and adapter-dpo/" in capsys.readouterr().err


def test_cli_defaults_and_options():
    args = cli.parse_args(["eval-adapters", "goku", "light"])
    assert (args.before, args.after, args.out, args.quick) == (
        "adapter",
        "adapter-dpo",
        None,
        False,
    )
    assert args.spc == cli.DEFAULT_SPC
    full = default_options()
    assert full.prompts == 24 and full.probes >= 100  # every probe a character ships
    quick = default_options(quick=True, prompts=3)
    assert quick == EvalOptions(**{**EvalOptions.quick().__dict__, "prompts": 3})


# -- the report files from fixed figures ---------------------------------------------------------


def _rates(before, after, difference):
    return {
        "before": before,
        "before_interval": [before - 0.1, min(1.0, before + 0.1)],
        "after": after,
        "after_interval": [after - 0.1, min(1.0, after + 0.1)],
        "after_minus_before": {"difference": difference, "interval": [difference - 0.2, 0.3]},
    }


FIGURES = {
    "characters": ["goku", "light"],
    "cast": ["goku", "light", "naruto"],
    "before": "adapter",
    "after": "adapter-dpo",
    "adapters": {},
    "options": EvalOptions().__dict__,
    "probes": {
        "goku": {"probes": 9, "of": 9, **_rates(0.5, 0.75, 0.25)},
        "light": {"probes": 0, "of": 0, "note": "no probes"},
    },
    "attribution": {
        "per_character": {
            "goku": {"prompts": 24, **_rates(0.6, 0.7, 0.1)},
            "light": {"prompts": 24, **_rates(0.5, 0.45, -0.05)},
        },
        "all": {"prompts": 48, **_rates(0.55, 0.6, 0.05)},
        "confusion": {"before": [], "after": []},
    },
    "likelihood": {
        "lines": {"goku": 20, "light": 20, "naruto": 20},
        "per_character": {
            "goku": {
                "lines": 20,
                "base": 30.0,
                "before": 20.0,
                "after": 21.0,
                "after_over_before": 1.05,
                "own_best_before": True,
                "own_best_after": False,
            },
            "light": {
                "lines": 20,
                "base": 25.0,
                "before": 18.0,
                "after": 18.0,
                "after_over_before": 1.0,
                "own_best_before": True,
                "own_best_after": True,
            },
        },
        "own_adapter_hits_at_1": {"before": 1.0, "after": 2 / 3},
        "hits_rows": ["goku", "light", "naruto"],
        "after_uses_before": ["naruto"],
        "perplexity": {},
    },
    "damage_guard": {
        "dialogues": 20,
        "base": 12.0,
        "target": 1.05,
        "per_character": {
            "goku": {
                "before": 13.0,
                "after": 14.0,
                "after_over_before": 14 / 13,
                "within_target": False,
            },
            "light": {
                "before": 13.0,
                "after": 13.5,
                "after_over_before": 13.5 / 13,
                "within_target": True,
            },
        },
    },
    "intervals": {"method": "m", "level": 0.95, "resamples": 2000, "seed": 0},
    "samples": [{"character": "goku", "prompt": "Hi?", "before": "Yo!", "after": "Hey!"}],
}


def test_headline_table_from_fixed_figures():
    lines = headline_table(FIGURES).splitlines()
    assert lines[0].startswith("| character | probes before | probes after | attribution before")
    assert lines[2] == (
        "| goku | 0.50 [.40, .60] | 0.75 [.65, .85] | 0.60 [.50, .70] | 0.70 [.60, .80] "
        "| +0.10 [-0.10, +0.30] | 20.00 | 21.00 | 1.077 (over target) |"
    )
    assert lines[3].startswith("| light | no probes | no probes | 0.50 [.40, .60] |")
    assert lines[3].endswith("| 18.00 | 18.00 | 1.038 |")


def test_markdown_and_json_from_fixed_figures(tmp_path):
    write_adapter_report(FIGURES, tmp_path)
    markdown = (tmp_path / "adapters.md").read_text()
    assert json.loads((tmp_path / "adapters.json").read_text()) == FIGURES
    assert markdown.startswith("# Adapters compared: adapter (before) vs adapter-dpo (after)")
    for title in (
        "## How measured",
        "## Headline",
        "## Rule probes without guards",
        "## Attribution",
        "## Held-out likelihood",
        "## SPC damage guard",
        "## Sample answers",
    ):
        assert title in markdown
    assert "| goku | 9 of 9 | 0.50 [0.40, 0.60] | 0.75 [0.65, 0.85] | +0.25 [+0.05, +0.30] |" in (
        markdown
    )
    assert "| light | 0 of 0 | no probes |  |  |" in markdown
    assert "| all | 48 | 0.55 [0.45, 0.65] | 0.60 [0.50, 0.70] | +0.05 [-0.15, +0.30] |" in (
        markdown
    )
    assert "| goku | 20 | 30.00 | 20.00 | 21.00 | 1.050 | yes | no |" in markdown
    assert "before adapters 1.00, after adapters 0.67." in markdown
    assert "naruto (not compared here) keeps its before adapter." in markdown
    assert "| goku | 13.00 | 14.00 | 1.077 | no |" in markdown
    assert "Without an adapter: 12.00; 20 held-out dialogues." in markdown
    assert "- before: Yo!\n- after: Hey!" in markdown
    how = markdown.split("## How measured\n\n")[1].split("\n")[0]
    assert "card_adapter" in how and "no rule guards" in how and "after/before <= 1.05" in how


def test_a_skipped_damage_guard_says_why(tmp_path):
    figures = {k: v for k, v in FIGURES.items() if k != "damage_guard"}
    figures["skipped"] = {"damage_guard": "no file at /x.csv; pass ... --spc"}
    markdown = render_markdown(figures)
    assert (
        "## SPC damage guard (Synthetic-Persona-Chat perplexity)\n\nSkipped: no file at /x.csv"
        in (markdown)
    )
    assert headline_table(figures).splitlines()[2].endswith("| skipped |")


# -- end to end on the embedded model ------------------------------------------------------------


def test_identical_adapters_give_identical_figures(tmp_path, config, clean_engine, random_adapters):
    root = tmp_path / "characters"
    pilots = [("Ready to fly?", "Always ready!"), ("Fuel?", "Full tank!"), ("Sky?", "Clear!")]
    chefs = [("Hungry?", "Soup is ready."), ("Salt?", "A pinch."), ("Knife?", "Sharp.")]
    # tess: after is a copy of before; remy: after is another random adapter.
    layout = {"tess": ("alpha", "alpha"), "remy": ("beta", "alpha")}
    for (ident, name, lines), (before, after) in zip(
        (("tess", "Tess", pilots), ("remy", "Remy", chefs)), layout.values(), strict=True
    ):
        folder = write_character(root, id=ident, name=name, aliases=[])
        shutil.copytree(random_adapters[before], folder / "adapter")
        shutil.copytree(random_adapters[after], folder / "adapter-dpo")
        write_split(folder, lines)
    characters = list(CharacterRegistry.load(root))
    spc = write_spc(tmp_path / "spc.csv", rows=11)  # held out: rows 0, 5, 10
    options = EvalOptions(
        prompts=1, probes=1, likelihood_lines=1, spc_dialogues=2, max_new_tokens=6, batch_size=8
    )
    out = tmp_path / "out"
    report = run_eval_adapters(
        characters,
        config=config.model_copy(update={"characters_dir": root}),
        out_dir=out,
        options=options,
        spc_path=spc,
        engine=clean_engine,
    )

    ids = ["remy", "tess"]
    assert report["characters"] == report["cast"] == ids
    assert set(clean_engine.adapters) == {"remy", "tess", "remy+after", "tess+after"}
    outcomes = report["outcomes"]
    for c in ids:
        probes = report["probes"][c]
        assert probes["probes"] == probes["of"] == 1
        assert probes["before"] == outcomes["probes"]["before"][c][0]
        attribution = report["attribution"]["per_character"][c]
        assert attribution["prompts"] == 1 and attribution["before"] in (0.0, 1.0)
        likelihood = report["likelihood"]["per_character"][c]
        assert likelihood["lines"] == 1 and likelihood["base"] > 1
        assert likelihood["after_over_before"] == pytest.approx(
            likelihood["after"] / likelihood["before"]
        )
        guard = report["damage_guard"]["per_character"][c]
        assert guard["within_target"] == (guard["after_over_before"] <= 1.05)
    assert report["damage_guard"]["dialogues"] == 2
    assert report["likelihood"]["after_uses_before"] == []
    assert set(report["likelihood"]["own_adapter_hits_at_1"].values()) <= {0.0, 0.5, 1.0}

    # tess's after adapter is its before one: the same answers and the same perplexities.
    samples = [s for s in report["samples"] if s["character"] == "tess"]
    assert len(samples) == 2  # the held-out prompt and the probe
    assert all(s["before"] == s["after"] for s in samples)
    assert outcomes["probes"]["before"]["tess"] == outcomes["probes"]["after"]["tess"]
    assert report["attribution"]["per_character"]["tess"]["after_minus_before"]["difference"] == 0
    tess = report["likelihood"]["per_character"]["tess"]
    assert tess["before"] == tess["after"] and tess["after_over_before"] == 1.0
    assert report["damage_guard"]["per_character"]["tess"]["after_over_before"] == 1.0
    # remy's after adapter is another one: its perplexities move.
    remy = report["likelihood"]["per_character"]["remy"]
    assert remy["before"] != remy["after"]

    assert json.loads((out / "adapters.json").read_text())["characters"] == ids
    markdown = (out / "adapters.md").read_text()
    assert "| tess | 1 of 1 |" in markdown and "| remy |" in markdown
    assert "Skipped" not in markdown

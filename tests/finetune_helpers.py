"""Helpers shared by the dataset-builder tests (test_finetune_build, test_sources_*)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from finetune.build import (
    BuildError,
    BuildOptions,
    BuildResult,
    add_build_arguments,
    run_build,
)
from finetune.sources import (
    ParseOptions,
    parse_source,
    renpy_definitions,
)

FIXTURES = Path(__file__).parent / "fixtures" / "finetune"


def parse_args(*argv: str | Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def build(chars: Path, *sources: str | Path, character: str = "goku", **options) -> BuildResult:
    """`run_build` with `BuildOptions` fields as keywords (lists become tuples)."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    paths = tuple(Path(s) for s in sources)
    return run_build(BuildOptions(paths, character, characters_dir=chars, **options))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def all_examples(result: BuildResult) -> list[dict]:
    return read_jsonl(result.files.train) + read_jsonl(result.files.eval)


def lines_of_scene(scene) -> list[tuple[str, str]]:
    return [(ln.speaker, ln.text) for ln in scene.lines]


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(BuildError) as info:
        func(*args, **kwargs)
    return str(info.value)


def renpy_parse(**options):
    files = [FIXTURES / "game" / "characters.rpy", FIXTURES / "game" / "script.rpy"]
    opts = ParseOptions(renpy=renpy_definitions(files), **options)
    return parse_source(files[1], opts, "script.rpy")

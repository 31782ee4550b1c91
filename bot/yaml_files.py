"""Validated YAML files (character cards, lorebooks): errors as `file:line: what; allowed`.

pydantic says where a value is wrong as a path of keys (`lore.3.keys.0`); the YAML node tree
says on which line that value was written, so a creator is sent to the line to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class YamlFileError(ValueError):
    """A YAML file that cannot be read or validated; the message names file and line."""


def read_mapping(path: Path, what: str) -> tuple[dict[str, Any], str]:
    """The file's top-level mapping and its text; YamlFileError (with the line) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlFileError(f"{path}: missing; {what}") from None
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"{path}: not UTF-8 ({exc.reason}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise YamlFileError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise YamlFileError(f"{path}:1: must be a mapping of fields; {what}")
    return data, text


def line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the value at `loc` (keys and list indexes) in the YAML `text`: the
    deepest node of the path that exists (a missing key points at its parent)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if 0 <= part < len(node.value) else None
            line = child.start_mark.line + 1 if child is not None else line
        if child is None:
            break
        node = child
    return line


def describe(path: Path, text: str, error: ValidationError, offset: tuple = ()) -> str:
    """`file:line: key: what is wrong (got ...)`, for the first error pydantic found."""
    first = error.errors()[0]
    loc = (*offset, *first["loc"])
    line = line_of(text, loc)
    where = f"{path}:{line}" if line else str(path)
    # lore.1.keys.0 -> lore[1].keys[0]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    message = first["msg"].removeprefix("Value error, ")
    if not key or first["type"] == "value_error":  # a check across fields says what it means
        return f"{where}: {key + ': ' if key else ''}{message}"
    return f"{where}: {key}: {message} (got {first.get('input')!r:.60})"


def validate(model: type[Model], path: Path, data: dict[str, Any], text: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise YamlFileError(describe(path, text, exc)) from None

"""Ren'Py scripts (`.rpy`) -> scenes.

* Characters come from `define x = Character("Name", ...)` (also `_("Name")`, `name=`,
  `kind=other` inheriting the name, `DynamicCharacter("var")`, and plain `x = Character(...)` in
  python blocks), collected from every `.rpy` source of the build first, so a game split over
  files works. `default`/`define var = "text"` gives values for `[var]`.
* Say statements: `x "..."`, `x happy "..."` (attributes and `@` ignored), `"Name" "..."`,
  a string alone (narration, speaker "Narrator", or dropped with `narration="drop"`),
  `narrator`/`centered` and nameless characters also narrate, `extend "..."` appends to the
  previous line. Trailing `with x`, `id x`, `nointeract`, `(args)` are ignored.
* Text tags (`{b}`, `{w}`, `{p}`, `{nw}`, `{color=...}`, `{a=...}`...) are removed, `{{` and
  `[[` are literal braces; `[var]` becomes the variable's default/define string value, or
  else its name (`[player.name!t]` -> `player name`). `\\n` and whitespace runs become a space.
* Every `label` starts a scene. In a `menu:`, each choice starts a scene (same split group as
  its label) that opens with up to 6 lines before the choice as context only (never replies),
  then the choice text said by the player (`player_name`, default "Player"); after the menu a
  new scene starts. `if`/`else` branches are read in order.
* `screen`, `python`, `init python`, `transform`, `style`, `image`, `translate`,
  `layeredimage` and `testcase` blocks are skipped. A say statement whose speaker variable is
  not defined is an error (unless the variable is in `known_names`); a line that starts like
  dialogue but cannot be parsed is skipped and counted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from finetune.sources.common import (
    NARRATOR,
    Dropped,
    Line,
    ParsedSource,
    ParseOptions,
    _Scenes,
    located,
    read_text,
)

MENU_CONTEXT_LINES = 6


@dataclass
class RenpyDefinitions:
    """Character variables -> display name (None: narrates) and string variables -> value."""

    characters: dict[str, str | None] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)


_QUOTES = "\"'`"


def _logical_lines(text: str) -> Iterator[tuple[int, int, str]]:
    """(first line number, indent, code) with comments removed; strings and brackets that span
    several physical lines are joined into one logical line."""
    buffer: list[str] = []
    start = indent = 0
    quote = ""  # the open string's delimiter
    depth = 0
    for number, physical in enumerate(text.split("\n"), start=1):
        if not buffer:
            if not physical.strip():
                continue
            start, indent = number, len(physical) - len(physical.lstrip(" \t"))
        i, out = 0, []
        while i < len(physical):
            char = physical[i]
            if quote:
                if char == "\\":
                    out.append(physical[i : i + 2])
                    i += 2
                    continue
                if physical.startswith(quote, i):
                    out.append(quote)
                    i += len(quote)
                    quote = ""
                    continue
            elif char == "#":
                break
            elif char in _QUOTES:
                quote = char * 3 if physical.startswith(char * 3, i) else char
                out.append(quote)
                i += len(quote)
                continue
            elif char in "([{":
                depth += 1
            elif char in ")]}":
                depth = max(0, depth - 1)
            out.append(char)
            i += 1
        buffer.append("".join(out))
        if not quote and depth == 0:
            code = "\n".join(buffer).strip()
            buffer = []
            if code:
                yield start, indent, code
    if buffer and "\n".join(buffer).strip():
        yield start, indent, "\n".join(buffer).strip()


_ESCAPES = {
    "n": " ",
    "t": " ",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "`": "`",
    "%": "%",
    "[": "[[",
    "{": "{{",
}


def _read_string(code: str, i: int) -> tuple[str, int] | None:
    """Parse the Ren'Py string literal starting at code[i]; (value, index after it) or None."""
    char = code[i] if i < len(code) else ""
    if char not in _QUOTES:
        return None
    quote = char * 3 if code.startswith(char * 3, i) else char
    i += len(quote)
    out: list[str] = []
    while i < len(code):
        if code[i] == "\\" and i + 1 < len(code):
            out.append(_ESCAPES.get(code[i + 1], code[i + 1]))
            i += 2
            continue
        if code.startswith(quote, i):
            return " ".join("".join(out).split()), i + len(quote)
        out.append(code[i])
        i += 1
    return None


_IDENT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CHARACTER_CALL = re.compile(
    r"^(?:define\s+(?:-?\d+\s+)?)?\$?\s*(?P<var>[A-Za-z_][\w.]*)\s*=\s*"
    r"(?P<kind>DynamicCharacter|Character|ADVCharacter|NVLCharacter)\s*\((?P<args>.*)\)\s*$",
    re.DOTALL,
)
_STRING_VAR = re.compile(
    r"^(?:define|default)\s+(?:-?\d+\s+)?(?P<var>[A-Za-z_][\w.]*)\s*=\s*(?P<value>.+)$",
    re.DOTALL,
)


def _split_args(args: str) -> list[str]:
    """Top-level comma-separated arguments of a call (strings and brackets respected)."""
    parts, depth, i, start = [], 0, 0, 0
    while i < len(args):
        char = args[i]
        if char in _QUOTES:
            parsed = _read_string(args, i)
            i = parsed[1] if parsed else len(args)
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(args[start:i].strip())
            start = i + 1
        i += 1
    parts.append(args[start:].strip())
    return [p for p in parts if p]


def _string_value(expr: str) -> str | None:
    """`"Name"`, `_("Name")`, `__('Name')` -> Name; anything else None."""
    expr = expr.strip()
    match = re.fullmatch(r"_{1,2}\s*\((.*)\)", expr, re.DOTALL)
    if match:
        expr = match[1].strip()
    parsed = _read_string(expr, 0) if expr else None
    if parsed and not expr[parsed[1] :].strip():
        return parsed[0]
    return None


def renpy_definitions(paths: Iterable[Path]) -> RenpyDefinitions:
    """Characters and string variables defined anywhere in these scripts."""
    raw: dict[str, tuple[str, str | None, str | None]] = {}  # var -> (call, name, kind)
    defs = RenpyDefinitions()
    for path in paths:
        for _, _, code in _logical_lines(read_text(path)):
            match = _CHARACTER_CALL.match(code)
            if match:
                name: str | None = None
                kind: str | None = None
                for index, arg in enumerate(_split_args(match["args"])):
                    key, eq, value = arg.partition("=")
                    if eq and re.fullmatch(r"\s*\w+\s*", key) and not value.startswith("="):
                        if key.strip() == "name":
                            name = _string_value(value)
                        elif key.strip() == "kind":
                            kind = value.strip()
                    elif index == 0:
                        name = _string_value(arg)
                raw[match["var"]] = (match["kind"], name, kind)
                continue
            match = _STRING_VAR.match(code)
            if match:
                value = _string_value(match["value"])
                if value is not None:
                    defs.variables[match["var"]] = value

    def resolve(var: str, seen: tuple[str, ...] = ()) -> str | None:
        call, name, kind = raw[var]
        if call == "DynamicCharacter" and name is not None:
            return defs.variables.get(name, name)
        if name is None and kind in raw and kind not in seen:
            return resolve(kind, (*seen, var))
        return name

    for var in raw:
        name = resolve(var)
        defs.characters[var] = _renpy_text(name, defs.variables) if name else None
    return defs


_TAG = re.compile(r"\{[^{}]*\}")
_SUBST = re.compile(r"\[([^\[\]]*)\]")


def _renpy_text(text: str, variables: dict[str, str]) -> str:
    """Remove text tags, interpolate `[var]`, keep `{{`/`[[` as literal brackets."""
    text = text.replace("{{", "\x00").replace("[[", "\x01")
    text = re.sub(r"\{/?(?:p|w|nw|fast|done)(?:=[^}]*)?\}", " ", text)  # pauses: a space
    text = _TAG.sub("", text)

    def substitute(match: re.Match[str]) -> str:
        expr = re.split(r"[!:]", match[1], maxsplit=1)[0].strip()
        if expr in variables:
            return _TAG.sub("", variables[expr])
        return " ".join(re.findall(r"[A-Za-z0-9]+", expr.replace("_", " ")))

    text = _SUBST.sub(substitute, text)
    text = text.replace("\x00", "{").replace("\x01", "[").replace("%%", "%")
    return " ".join(text.split())


# Statements that are never a say statement (their first word is not a speaker).
_KEYWORD_WORDS = """
show scene hide with play queue stop voice sound music pause jump call return label menu define
default image init python transform screen style translate window nvl if elif else while for pass
camera at as behind onlayer zorder expression layeredimage testcase early renpy text textbutton
imagebutton add use vbox hbox frame key timer tooltip has fixed grid viewport vpgrid button bar
vbar null input mousearea showif on action hotspot imagemap side drag draggroup transclude
outlines rpy set config store python_early audio
"""
RENPY_KEYWORDS = frozenset(_KEYWORD_WORDS.split())

_SKIP_BLOCK = re.compile(
    r"^(?:init(?:\s+-?\d+)?\s+python\b|python\b|screen\b|transform\b|style\b|image\b"
    r"|layeredimage\b|translate\b|testcase\b).*:$"
)
_NARRATORS = frozenset({"narrator", "centered", "vcentered"})
_TRAILING = re.compile(r"^(?:\s*(?:with\s+\S+|id\s+\S+|nointeract|\(.*\)))*\s*$", re.DOTALL)


@dataclass(frozen=True)
class _Say:
    who: str | None  # variable name, or None for a narration string
    who_literal: str | None  # "Name" "..." form
    what: str


@dataclass(frozen=True)
class _Choice:
    """A menu choice: `"text":` (or `"text" if cond:`)."""

    text: str


@dataclass(frozen=True)
class _Unparsed:
    """Starts like dialogue but cannot be parsed."""


def _parse_say(code: str) -> _Say | _Choice | _Unparsed | None:
    """A say statement, a menu choice, or `_Unparsed` if it looks like dialogue but cannot be
    parsed; None if it is some other statement."""
    if code[0] in _QUOTES:
        first = _read_string(code, 0)
        if first is None:
            return _Unparsed()
        rest = code[first[1] :].strip()
        if rest.endswith(":") and (rest == ":" or rest.startswith("if ")):
            return _Choice(first[0])
        if rest and rest[0] in _QUOTES:
            second = _read_string(rest, 0)
            if second is None or not _TRAILING.match(rest[second[1] :]):
                return _Unparsed()
            return _Say(None, first[0], second[0])
        return _Say(None, None, first[0]) if _TRAILING.match(rest) else _Unparsed()
    match = _IDENT.match(code)
    if not match or match[0] in RENPY_KEYWORDS or code.endswith(":"):
        return None
    i = match.end()
    # Attributes (`happy`, `-sad`, `@ vhappy`) until the string.
    attrs = re.compile(r"\s+(?:@\s*)?-?[\w]+")
    while True:
        while i < len(code) and code[i] == " ":
            i += 1
        if i < len(code) and code[i] in _QUOTES:
            break
        step = attrs.match(code, i - 1 if i and code[i - 1] == " " else i)
        if not step or step.end() <= i:
            return None
        i = step.end()
    said = _read_string(code, i)
    if said is None:
        return _Unparsed()
    if not _TRAILING.match(code[said[1] :]):
        return None  # e.g. `textbutton "Hi" action Return()`: not dialogue
    return _Say(match[0], None, said[0])


@dataclass
class _Menu:
    indent: int
    item_indent: int | None = None
    context: list[Line] | None = None
    choices: int = 0
    number: int = 0


def parse_renpy(path: Path, options: ParseOptions, display: str | None = None) -> ParsedSource:
    src = display or str(path)
    text = read_text(path)
    defs = options.renpy or renpy_definitions([path])
    builder = _Scenes(src)
    dropped: list[Dropped] = []
    label = "(top)"
    menus: list[_Menu] = []
    menu_count = 0
    skip_indent: int | None = None
    known = options.known_names

    def speaker_of(say: _Say, number: int) -> str | None:
        if say.who_literal is not None:
            return _renpy_text(say.who_literal, defs.variables) or NARRATOR
        if say.who is None or say.who in _NARRATORS:
            return NARRATOR
        if say.who in defs.characters:
            return defs.characters[say.who] or NARRATOR
        if say.who.casefold() in known:
            return say.who
        raise located(
            src,
            number,
            f"unknown speaker '{say.who}' (no `define {say.who} = Character(...)` in the sources)",
            "add the .rpy file that defines it, or pass --speaker "
            f"{say.who} if these are the character's lines",
        )

    for number, indent, code in _logical_lines(text):
        if skip_indent is not None:
            if indent > skip_indent:
                continue
            skip_indent = None
        closed: _Menu | None = None
        while menus and indent <= menus[-1].indent:
            closed = menus.pop()
        match = re.match(r"^label\s+([\w.]+)", code)
        if match:
            name = match[1]
            label = label.split(".")[0] + name if name.startswith(".") else name
            builder.start(f"{src}:{label}")
            menus.clear()
            continue
        if closed is not None:
            after = f"{src}:{label}/after-menu{closed.number}"
            builder.start(after, group=f"{src}:{label}")
        if _SKIP_BLOCK.match(code):
            skip_indent = indent
            continue
        if re.match(r"^menu(?:\s+\w+)?\s*(?:\(.*\))?\s*:$", code):
            menu_count += 1
            menus.append(_Menu(indent, number=menu_count))
            continue
        if code.startswith(("$", "define ", "default ")):
            continue
        menu = menus[-1] if menus else None
        if menu is not None and menu.item_indent is None:
            menu.item_indent = indent
        say = _parse_say(code)
        if isinstance(say, _Choice):
            if menu is None or indent != menu.item_indent:
                dropped.append(Dropped("Ren'Py: menu choice outside a menu", src, number, code))
                continue
            if menu.context is None:
                last_lines = builder.current.lines if builder.current else []
                menu.context = [
                    Line(ln.speaker, ln.text, ln.source, ln.line, context_only=True)
                    for ln in last_lines[-MENU_CONTEXT_LINES:]
                ]
            menu.choices += 1
            scene = builder.start(
                f"{src}:{label}/menu{menu.number}.{menu.choices}", group=f"{src}:{label}"
            )
            scene.lines.extend(menu.context)
            choice = _renpy_text(say.text, defs.variables)
            if choice:
                builder.add(Line(options.player_name, choice, src, number))
            continue
        if isinstance(say, _Unparsed):
            dropped.append(
                Dropped("Ren'Py: dialogue line that cannot be parsed", src, number, code)
            )
            continue
        if say is None:
            continue
        what = _renpy_text(say.what, defs.variables)
        if say.who == "extend":
            last = builder.last()
            if last is None or last.context_only:
                dropped.append(
                    Dropped("Ren'Py: extend without a line before it", src, number, code)
                )
            elif what:
                builder.replace_last(Line(last.speaker, f"{last.text} {what}", src, last.line))
            continue
        speaker = speaker_of(say, number)
        if speaker == NARRATOR and options.narration == "drop":
            dropped.append(Dropped("narration (dropped by option)", src, number, what))
            continue
        if builder.current is None:
            builder.start(f"{src}:{label}")
        builder.add(Line(speaker or NARRATOR, what, src, number))
    return ParsedSource(src, ".rpy", builder.result(), dropped, text.count("\n") + 1)

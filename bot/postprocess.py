"""Cleaning model output: the quirks of small and script-tuned models, and Discord's size limit.

Script-tuned models echo the speaker ("Goku: Goku: hey"), run on into the next speaker's turn
("User: ..."), stop mid-sentence at the token limit and loop on one line. Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DISCORD_MESSAGE_LIMIT = 2000

# Speaker labels that always mean "someone else's turn starts here".
GENERIC_SPEAKERS = ("User", "Assistant", "Human", "AI", "System", "{user}", "{{user}}", "{{char}}")
TEMPLATE_LEFTOVERS = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id|end)\|>|</s>")
SENTENCE_END = re.compile(r"""[.!?…](?:["'”’)\]*~_]*)(?=\s|$)""")
ENDS_WITH_EMOJI = re.compile(r"[\U0001F300-\U0001FAFF\u2600-\u27BF]\s*$")


def _label_pattern(names: Sequence[str]) -> str:
    """A speaker label: a name with a colon, bare or in markdown emphasis (**Goku:**, *Goku*:)."""
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True) if n)
    return rf"(?:[*_]{{0,3}})(?:{alternatives})(?:[*_]{{0,3}})\s*:(?:[*_]{{0,3}})"


def strip_speaker_prefixes(text: str, names: Sequence[str]) -> str:
    """Remove any number of leading `Name:` labels of the given names."""
    pattern = re.compile(rf"^\s*{_label_pattern(names)}[ \t]*", re.IGNORECASE)
    previous = None
    while previous != text:
        previous, text = text, pattern.sub("", text, count=1)
    return text.lstrip()


def cut_other_turns(text: str, own_names: Sequence[str], other_speakers: Sequence[str]) -> str:
    """Cut where another speaker's line starts; own-name lines continue, unlabelled."""
    text = TEMPLATE_LEFTOVERS.split(text, maxsplit=1)[0]
    other = re.compile(rf"^\s*{_label_pattern([*GENERIC_SPEAKERS, *other_speakers])}", re.I)
    kept = []
    for line in text.split("\n"):
        if other.match(line):
            break
        kept.append(strip_speaker_prefixes(line, own_names) if line.strip() else line)
    return "\n".join(kept)


def drop_dangling_sentence(text: str) -> str:
    """Trim an unfinished last sentence (the token limit hit mid-sentence)."""
    text = text.rstrip()
    ends = list(SENTENCE_END.finditer(text))
    if ENDS_WITH_EMOJI.search(text) or (ends and ends[-1].end() == len(text)):
        return text  # already finished
    if ends:
        return text[: ends[-1].end()]
    return text.rstrip(" ,;:-") + "…"  # one unfinished sentence: keep it, mark it


def collapse_repeats(text: str) -> str:
    """Drop exact repeated lines and a sentence said twice in a row."""
    seen: set[str] = set()
    lines = []
    for line in text.split("\n"):
        key = line.strip()
        if key and key in seen:
            continue
        seen.add(key)
        lines.append(re.sub(r"(?<!\S)(\S.*?[.!?…])(?:\s+\1)+(?=\s|$)", r"\1", line))
    return "\n".join(lines)


def normalise_whitespace(text: str) -> str:
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def clean_reply(
    text: str,
    *,
    speaker_names: Sequence[str],
    other_speakers: Sequence[str] = (),
    hit_token_limit: bool = False,
    fallback: str,
) -> str:
    """Make raw model output fit to post as the character; never empty."""
    text = strip_speaker_prefixes(text, speaker_names)
    text = cut_other_turns(text, speaker_names, other_speakers)
    text = collapse_repeats(text)
    text = normalise_whitespace(text)
    if hit_token_limit and text:
        text = drop_dangling_sentence(text)
    if not re.search(r"\w", text):
        return fallback
    return text


def _split_point(text: str, limit: int) -> int:
    """The best place to cut `text` so the first part has at most `limit` characters."""
    window = text[: limit + 1]
    for pattern in (r"\n\s*\n", r"\n", r"[.!?…][\"')\]*]*\s", r"\s"):
        matches = [m.end() for m in re.finditer(pattern, window) if 0 < m.end() <= limit]
        # Prefer a break in the second half, so chunks are not tiny.
        good = [end for end in matches if end > limit // 2]
        if good:
            return good[-1]
    return limit


def split_message(text: str, limit: int = DISCORD_MESSAGE_LIMIT) -> list[str]:
    """Split for Discord: paragraphs, then lines, sentences, words; code fences closed/reopened."""
    if limit < 16:
        raise ValueError("limit must be at least 16 characters")
    chunks: list[str] = []
    rest = text.strip()
    reopen = ""  # the fence (```lang) to reopen in the next chunk
    while rest:
        rest = reopen + rest if reopen else rest
        room = limit - 4  # room for a closing fence if we must split inside one
        if len(rest) <= limit:
            chunks.append(rest)
            break
        cut = _split_point(rest, room)
        chunk, rest = rest[:cut].rstrip(), rest[cut:].strip()
        fences = re.findall(r"^```(\S*)", chunk, flags=re.M)
        if len(fences) % 2 == 1:  # inside a code block: close here, reopen next
            chunk += "\n```"
            reopen = f"```{fences[-1]}\n"
        else:
            reopen = ""
        if chunk:
            chunks.append(chunk)
    return [c for c in chunks if c.strip()]

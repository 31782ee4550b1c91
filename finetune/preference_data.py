"""Preference pairs for DPO: their one type and file format, and where they come from.

One JSON line per pair: {"character_id", "source", "prompt", "chosen", "rejected", "detail"}.
`prompt` is the chat-templated prompt text exactly as the model sees it (generation prompt
included); `chosen` and `rejected` are reply texts without the end-of-turn token (the trainer
adds what the chat template writes after a reply). Sources:

- `swipe`, `vote`: exported from users' preference records (`bot.preferences`): the answer kept
  against the ones swiped away, an up-voted answer against a down-voted one for the same prompt.
- `rule`: synthetic (`finetune.synthesize`): the rule's own example answers and samples that pass
  its guard, against samples that break it.
- `mend`: synthetic: an answer of the character's own model that breaks a rule, mended by the
  rule's `mends` in the card, against the answer as it was: the two differ only where the rule
  was broken.
- `contrast`: synthetic: the character's real line against what another character's adapter
  says to the same context.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bot.files import write_files_atomically
from bot.preferences import PreferenceRecord
from finetune.errors import FinetuneError

SOURCES = ("swipe", "vote", "rule", "mend", "contrast")
# The files of a preferences folder (`DatasetFiles.preferences`); each .jsonl has its .md card.
USER_PAIRS = "pairs.jsonl"  # exported from users' records
USER_VOTES = "votes.jsonl"
SYNTHETIC_PAIRS = "synthetic.jsonl"
PAIR_FILES = (SYNTHETIC_PAIRS, USER_PAIRS)  # what `train --method dpo` reads by default
_FIELDS = ("character_id", "source", "prompt", "chosen", "rejected")


class PreferenceDataError(FinetuneError, ValueError):
    """A pairs file that cannot be used; the message names file and line."""


@dataclass(frozen=True)
class PreferencePair:
    character_id: str
    source: str  # one of SOURCES
    prompt: str
    chosen: str
    rejected: str
    detail: str = ""  # the rule, the other adapter, or the record it came from

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {', '.join(SOURCES)}")
        for name in ("prompt", "chosen", "rejected"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} is empty")
        if self.chosen.strip() == self.rejected.strip():
            raise ValueError("chosen and rejected are the same text")

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> PreferencePair:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        unknown = sorted(set(data) - {*_FIELDS, "detail"})
        if unknown:
            raise ValueError(f"unknown key {', '.join(unknown)}")
        for name, value in data.items():
            if not isinstance(value, str):
                raise ValueError(f"{name} is not a string")
        return cls(**data)


def read_pairs(path: Path, character_id: str | None = None) -> list[PreferencePair]:
    """Every pair of a JSONL file; PreferenceDataError names the first bad line. With
    `character_id`, a pair of another character is an error (a wrong file)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PreferenceDataError(f"{path}: cannot read the pairs ({exc.strerror})") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            pair = PreferencePair.from_json(line)
        except ValueError as exc:
            raise PreferenceDataError(
                f"{path}:{number}: not a preference pair: {exc}; expected one JSON object per "
                'line: {"character_id", "source", "prompt", "chosen", "rejected", "detail"} '
                f"with source one of {', '.join(SOURCES)}"
            ) from None
        if character_id is not None and pair.character_id != character_id:
            raise PreferenceDataError(
                f"{path}:{number}: a pair of {pair.character_id!r}, not {character_id!r}; give "
                "this character's own pairs file"
            )
        pairs.append(pair)
    return pairs


def pairs_text(pairs: Iterable[PreferencePair]) -> str:
    return "".join(pair.to_json() + "\n" for pair in pairs)


# -- from users' records -----------------------------------------------------------------------


@dataclass(frozen=True)
class Vote:
    """An answer voted on, without a pair (KTO-style data: prompt, completion, label)."""

    prompt: str
    completion: str
    label: bool  # True: up

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def pairs_from_records(
    records: Sequence[PreferenceRecord],
) -> tuple[list[PreferencePair], list[Vote]]:
    """Pairs from swipes (kept vs swiped away) and from votes on one prompt (up vs down), and
    every vote on its own."""
    pairs, votes = [], []
    ups: dict[str, set[str]] = defaultdict(set)
    downs: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.kind == "swipe":
            for chosen, rejected in record.pairs:
                pairs.append(
                    PreferencePair(
                        record.character_id, "swipe", record.prompt, chosen, rejected, record.id
                    )
                )
            continue
        if record.chosen is not None:
            ups[record.prompt].add(record.chosen)
            votes.append(Vote(record.prompt, record.chosen, True))
        for text in record.rejected:
            downs[record.prompt].add(text)
            votes.append(Vote(record.prompt, text, False))
    by_prompt = {r.prompt: r.character_id for r in records}
    for prompt in sorted(ups.keys() & downs.keys()):
        for chosen in sorted(ups[prompt]):
            for rejected in sorted(downs[prompt] - {chosen}):
                pairs.append(PreferencePair(by_prompt[prompt], "vote", prompt, chosen, rejected))
    return pairs, votes


# -- dataset card ------------------------------------------------------------------------------


def card_markdown(title: str, pairs: Sequence[PreferencePair], facts: dict[str, object]) -> str:
    """A short dataset card: where the pairs come from and how many of each."""
    per_source = Counter(p.source for p in pairs)
    prompts = len({p.prompt for p in pairs})
    lines = [f"# {title}", "", f"- pairs: {len(pairs)} over {prompts} prompts"]
    lines += [f"- {source}: {per_source[source]}" for source in SOURCES if per_source[source]]
    lines += [f"- {name}: {value}" for name, value in facts.items()]
    per_rule = {s: Counter(p.detail for p in pairs if p.source == s) for s in ("rule", "mend")}
    rules = per_rule["rule"] + per_rule["mend"]
    if rules:
        lines += ["", "| rule | rule pairs | mend pairs |", "|---|---|---|"]
        lines += [
            f"| {rule[:80]} | {per_rule['rule'][rule]} | {per_rule['mend'][rule]} |"
            for rule, _ in rules.most_common()
        ]
    return "\n".join(lines) + "\n"


def write_pairs_with_card(
    pairs_path: Path,
    pairs: Sequence[PreferencePair],
    card_path: Path,
    card: str,
    extra: dict[Path, str] | None = None,
) -> None:
    """The pairs, their card (and any other file) all written, or none of them."""
    write_files_atomically({pairs_path: pairs_text(pairs), card_path: card, **(extra or {})})

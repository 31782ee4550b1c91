"""Scenes -> training records: merged turns, one example per character turn, filters, the split.

Rules (steps 4 to 6 of `finetune build`):
  4. Turns: consecutive lines by one speaker in a scene merge into one turn (joined by a
     newline), but a turn is closed before it would grow past `max_turn_chars`, so long
     monologues become several turns.
  5. Examples: every character turn with at least one turn before it in its scene gives one
     example: up to `context_turns` turns before it (role "character" for its own turns, "user"
     otherwise), then its text as the reply. A character turn that opens its scene has nothing
     to answer and is reported as dropped. Short, duplicate and near-duplicate replies are
     dropped as targets (the turn stays as context).
  6. Split by scene group, among the groups that hold the character's examples (scenes it does
     not speak in play no part): in the order of sha256(seed:group), the groups that still fit
     in `eval_fraction` of the character's examples go to eval, then the smallest group left
     if it brings the count closer (`eval_groups`). So eval's share ends near the fraction for
     every character, however few scenes it speaks in. The same input and seed always give
     the same split, a scene group never straddles it, and adding scenes without the
     character changes nothing; with 2+ groups eval and train are non-empty, and a single
     group always trains.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

from bot.history import Turn
from bot.training_data import TrainingRecord
from finetune import cleaning
from finetune.sources import Dropped, Line, Scene

REASON_OPENS_SCENE = "opens its scene (no turn before it to answer)"


def scene_turns(scene: Scene, max_chars: int) -> list[Line]:
    """The scene's lines with consecutive lines of one speaker merged, up to `max_chars`."""
    turns: list[Line] = []
    for line in scene.lines:
        last = turns[-1] if turns else None
        if (
            last is not None
            and last.speaker.casefold() == line.speaker.casefold()
            and last.context_only == line.context_only
            and len(last.text) + 1 + len(line.text) <= max_chars
        ):
            turns[-1] = replace(last, text=f"{last.text}\n{line.text}")
            continue
        turns.append(line)
    return turns


def example_id(scene: str, location: str, reply: str) -> str:
    return hashlib.sha256(f"{scene}\x1f{location}\x1f{reply}".encode()).hexdigest()[:16]


def make_examples(
    scenes: Sequence[Scene],
    is_character: Callable[[str], bool],
    character_name: str,
    *,
    context_turns: int,
    max_turn_chars: int,
) -> tuple[list[TrainingRecord], list[Dropped]]:
    """One record per character turn that answers something; the turns that open a scene."""
    examples: list[TrainingRecord] = []
    unused: list[Dropped] = []
    for scene in scenes:
        turns = scene_turns(scene, max_turn_chars)
        for i, turn in enumerate(turns):
            if not is_character(turn.speaker) or turn.context_only:
                continue
            if i == 0:
                unused.append(Dropped(REASON_OPENS_SCENE, turn.source, turn.line, turn.text))
                continue
            context = tuple(
                Turn(
                    "character" if is_character(t.speaker) else "user",
                    character_name if is_character(t.speaker) else t.speaker,
                    t.text,
                    timestamp=0.0,
                )
                for t in turns[max(0, i - context_turns) : i]
            )
            location = f"{turn.source}:{turn.line}"
            examples.append(
                TrainingRecord(
                    id=example_id(scene.id, location, turn.text),
                    context=context,
                    reply=turn.text,
                    scene=scene.id,
                    source=turn.source,
                    line=turn.line,
                )
            )
    return examples, unused


def filter_examples(
    examples: Sequence[TrainingRecord], min_reply_chars: int, threshold: float
) -> tuple[list[TrainingRecord], list[Dropped]]:
    """Records whose reply is long enough and not a (near) duplicate of an earlier reply."""
    dropped: list[Dropped] = []
    long_enough = []
    for example in examples:
        if len(example.reply) < min_reply_chars:
            dropped.append(_dropped(cleaning.REASON_SHORT, example, example.reply))
        else:
            long_enough.append(example)
    kept = []
    flags = cleaning.duplicate_flags([e.reply for e in long_enough], threshold)
    for example, (reason, first) in zip(long_enough, flags, strict=True):
        if reason is None:
            kept.append(example)
            continue
        assert first is not None
        note = f"{example.reply}  (like {long_enough[first].location})"
        dropped.append(_dropped(reason, example, note))
    return kept, dropped


def _dropped(reason: str, example: TrainingRecord, text: str) -> Dropped:
    return Dropped(reason, str(example.source), example.line or 0, text)


def split_unit(group: str, seed: int) -> float:
    """A number in [0, 1) fixed by the group and seed."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


SPLIT_RULE = (
    "the character's scene groups in sha256(seed:group) order go to eval while they fit in "
    "eval_fraction of its examples; then the smallest group left when it brings the count "
    "closer (2+ groups: at least one group in eval, at least one in train)"
)


def eval_groups(sizes: dict[str, int], eval_fraction: float, seed: int) -> set[str]:
    """The groups held out: `sizes` maps each group to its number of examples.

    The target is eval_fraction of all the examples. In hash order, each group that still fits
    in it is taken, and one too large for what is left is passed over; then the smallest group
    left is added when that brings the count closer to the target, or when nothing fitted (eval
    is never empty). Except in that case, the count ends within half the smallest group left of
    the target, and no group larger than twice the target goes to eval."""
    if len(sizes) < 2 or eval_fraction <= 0:
        return set()  # the only group trains: holding it out would leave nothing to learn
    order = sorted(sizes, key=lambda g: (split_unit(g, seed), g))
    target = eval_fraction * sum(sizes.values())
    chosen: list[str] = []
    count = 0
    for group in order:
        if count + sizes[group] <= target:
            chosen.append(group)
            count += sizes[group]
    left = [g for g in order if g not in chosen]
    smallest = min(left, key=lambda g: sizes[g])  # the first in hash order among equals
    if not chosen or count + sizes[smallest] - target < target - count:
        chosen.append(smallest)
    if len(chosen) == len(order):
        chosen.pop()  # only with eval_fraction over 1/2: keep a group to train on
    return set(chosen)


def split_examples(
    examples: Sequence[TrainingRecord], group_of: dict[str, str], eval_fraction: float, seed: int
) -> tuple[list[TrainingRecord], list[TrainingRecord]]:
    """Whole scene groups of `examples` go to eval until they hold about eval_fraction of them.

    `group_of` maps a scene id to its group (scenes of one group share a split); see
    `eval_groups` and SPLIT_RULE for which groups."""
    sizes = Counter(group_of[e.scene] for e in examples)
    evals = eval_groups(sizes, eval_fraction, seed)
    train = [e for e in examples if group_of[e.scene] not in evals]
    eval_ = [e for e in examples if group_of[e.scene] in evals]
    return train, eval_

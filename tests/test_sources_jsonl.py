"""JSON lines (Q&A pairs, chat scenes): `finetune.sources.jsonl`."""

from __future__ import annotations

from finetune.sources import (
    ParseOptions,
    parse_source,
)
from tests.finetune_helpers import (
    FIXTURES,
    lines_of_scene,
)


def test_jsonl_qa_pairs_and_chat_scenes():
    options = ParseOptions(character_name="Goku")
    qa = parse_source(FIXTURES / "qa.jsonl", options, "qa.jsonl")
    assert [lines_of_scene(s) for s in qa.scenes] == [
        [
            ("User", "What do you eat for breakfast?"),
            ("Goku", "Everything! Rice, fish, meat, more rice!"),
        ],
        [
            ("User", "Who is your best friend?"),
            ("Goku", "Krillin, for sure. We trained together as kids."),
        ],
    ]
    assert [s.lines[0].line for s in qa.scenes] == [1, 3]
    chat = parse_source(FIXTURES / "chat.jsonl", options, "chat.jsonl")
    assert [s.id for s in chat.scenes] == ["chat.jsonl:training", "chat.jsonl#2"]
    assert [ln.speaker for ln in chat.scenes[0].lines] == ["Krillin", "Goku", "Krillin", "Goku"]
    # role user/assistant map to User and the character; the system message is skipped.
    assert lines_of_scene(chat.scenes[1]) == [
        ("User", "Hi Goku!"),
        ("Goku", "Hey there! You look strong!"),
    ]
    assert [d.reason for d in chat.dropped] == ["system message"]

"""The training record type and a character's data paths (`bot.training_data`)."""

from __future__ import annotations

import json
import os

import pytest

from bot.history import Turn
from bot.training_data import DatasetFiles, RecordError, TrainingRecord, read_records, write_records

LINE = (
    '{"id": "ab12", "scene": "s.txt#1", "source": "sources/s.txt:14", "context": '
    '[{"role": "user", "author": "Krillin", "text": "Hungry?"}], "reply": "Always! ハハ"}'
)


def test_a_built_line_reads_and_writes_back_byte_for_byte():
    record = TrainingRecord.from_json(LINE)
    assert (record.source, record.line, record.location) == (
        "sources/s.txt",
        14,
        "sources/s.txt:14",
    )
    assert record.message == Turn("user", "Krillin", "Hungry?", timestamp=0.0)
    assert record.to_json() == LINE


def test_persona_records_keep_persona_and_row_and_leave_out_scene_and_source():
    record = TrainingRecord(
        "row3-turn1",
        (Turn("user", "User 1", "Hi", timestamp=0.0),),
        "Hey",
        persona="I bake.",
        row=3,
    )
    data = json.loads(record.to_json())
    assert list(data) == ["id", "context", "reply", "persona", "row"]
    assert TrainingRecord.from_json(record.to_json()) == record


def test_a_reply_after_the_character_s_own_turn_has_no_message():
    record = TrainingRecord("x", (Turn("character", "Goku", "Hi", timestamp=0.0),), "Hey")
    assert record.message is None


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"reply": "x"}', '"context" must be a list'),
        (
            '{"context": [{"role": "bot", "author": "a", "text": "b"}], "reply": "x"}',
            "context[0]: role",
        ),
        ('{"context": [{"role": "user", "author": 1, "text": "b"}], "reply": "x"}', "context[0]: "),
        ('{"context": [], "reply": 5}', '"reply" must be a string'),
    ],
)
def test_bad_lines_name_file_line_and_what_is_wrong(tmp_path, line, what):
    path = tmp_path / "train.jsonl"
    path.write_text(LINE + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(RecordError) as info:
        read_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: not a training record: ")
    assert what in message and "expected one JSON object per line" in message


def test_write_records_replaces_the_file_whole(tmp_path):
    files = DatasetFiles.of(tmp_path, "goku")
    assert files.train == tmp_path / "goku" / "data" / "train.jsonl"
    assert files.probes == tmp_path / "goku" / "data" / "sources" / "probes.yaml"
    records = [TrainingRecord.from_json(LINE)] * 2
    write_records(files.train, records)
    assert read_records(files.train) == records
    write_records(files.train, records[:1])
    assert files.train.read_text(encoding="utf-8") == LINE + "\n"
    assert [p.name for p in files.folder.iterdir()] == ["train.jsonl"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert files.train.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0600

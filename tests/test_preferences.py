"""Preference records in Redis, the pairs file format, and `preferences export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.preferences import PreferenceRecord, PreferenceStore
from finetune.errors import FinetuneError
from finetune.preference_data import (
    USER_PAIRS,
    USER_VOTES,
    PreferenceDataError,
    PreferencePair,
    pairs_from_records,
    pairs_text,
    read_pairs,
)
from finetune.preferences import export_records, parse_since


def swipe(message: str, chosen: str, *rejected: str, created: float = 100.0) -> PreferenceRecord:
    return PreferenceRecord(
        id=f"swipe:{message}",
        kind="swipe",
        character_id="goku",
        prompt=f"prompt of {message}",
        chosen=chosen,
        rejected=rejected,
        adapter_version="abc123",
        created=created,
    )


def vote(message: str, voter: str, text: str, up: bool, created: float = 100.0):
    return PreferenceRecord(
        id=f"vote:{message}:{voter}",
        kind="vote",
        character_id="goku",
        prompt=f"prompt of {message}",
        chosen=text if up else None,
        rejected=() if up else (text,),
        adapter_version="abc123",
        created=created,
        voter=voter,
    )


@pytest.fixture
async def store(redis_connection, key_prefix) -> PreferenceStore:
    return PreferenceStore(redis_connection.client, key_prefix=key_prefix)


# -- the store ---------------------------------------------------------------------------------


async def test_a_record_round_trips_and_a_second_put_replaces_it(store):
    await store.put("chan1", swipe("m1", "Mr. Zenny!", "Zeno."))
    await store.put("chan1", swipe("m1", "Zeno.", "Mr. Zenny!"))  # browsed back
    records = await store.records("goku")
    assert len(records) == 1
    assert records[0] == swipe("m1", "Zeno.", "Mr. Zenny!")


async def test_records_since_keeps_the_newer_ones_oldest_first(store):
    await store.put("c", swipe("new", "a", "b", created=300.0))
    await store.put("c", swipe("old", "a", "b", created=100.0))
    await store.put("c", swipe("mid", "a", "b", created=200.0))
    assert [r.id for r in await store.records("goku")] == ["swipe:old", "swipe:mid", "swipe:new"]
    assert [r.id for r in await store.records("goku", since=200.0)] == ["swipe:mid", "swipe:new"]


async def test_forget_channel_removes_only_that_channels_records(store):
    await store.put("chan1", swipe("m1", "a", "b"))
    await store.put("chan1", vote("m1", "v1", "a", up=True))
    await store.put("chan2", swipe("m2", "a", "b"))
    assert await store.forget_channel("chan1") == 2
    assert [r.id for r in await store.records("goku")] == ["swipe:m2"]
    assert await store.forget_channel("chan1") == 0


async def test_a_malformed_record_is_skipped_not_fatal(store, caplog):
    await store.put("c", swipe("m1", "a", "b"))
    await store.redis.hset(store.key("goku"), "swipe:bad", "{not json")
    assert [r.id for r in await store.records("goku")] == ["swipe:m1"]
    assert "malformed preference record" in caplog.text


async def test_voter_hash_is_stable_and_not_the_raw_id(store):
    first = await store.voter_hash(123456789012345678)
    assert first == await store.voter_hash("123456789012345678")
    assert first != await store.voter_hash(123456789012345679)
    assert "123456789012345678" not in first
    assert len(first) == 16


def test_a_record_needs_an_answer_and_a_known_kind():
    with pytest.raises(ValueError, match="chosen or a rejected"):
        PreferenceRecord("x", "vote", "goku", "p", None, (), "")
    with pytest.raises(ValueError, match="kind 'like' is not one of"):
        PreferenceRecord("x", "like", "goku", "p", "a", (), "")  # type: ignore[arg-type]


# -- records -> pairs --------------------------------------------------------------------------


def test_a_swipe_gives_the_kept_answer_against_each_swiped_away():
    pairs, votes = pairs_from_records([swipe("m1", "kept", "first", "second")])
    assert [(p.chosen, p.rejected, p.source) for p in pairs] == [
        ("kept", "first", "swipe"),
        ("kept", "second", "swipe"),
    ]
    assert pairs[0].prompt == "prompt of m1" and pairs[0].detail == "swipe:m1"
    assert votes == []


def test_votes_pair_up_against_down_on_the_same_prompt_only():
    records = [
        vote("m1", "v1", "good answer", up=True),
        vote("m1", "v2", "bad answer", up=False),
        vote("m2", "v1", "lonely down", up=False),
    ]
    pairs, votes = pairs_from_records(records)
    assert [(p.chosen, p.rejected, p.source) for p in pairs] == [
        ("good answer", "bad answer", "vote")
    ]
    assert [(v.completion, v.label) for v in votes] == [
        ("good answer", True),
        ("bad answer", False),
        ("lonely down", False),
    ]


# -- the pairs file ----------------------------------------------------------------------------


def pair(**changes) -> PreferencePair:
    values = dict(character_id="goku", source="rule", prompt="p", chosen="a", rejected="b")
    return PreferencePair(**(values | changes))


def test_pairs_round_trip_through_the_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pairs = [pair(), pair(source="contrast", chosen="c", detail="light answered")]
    path.write_text(pairs_text(pairs), encoding="utf-8")
    assert read_pairs(path, "goku") == pairs


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json", "not JSON"),
        ('{"character_id": "goku"}', "missing source, prompt, chosen, rejected"),
        (pair().to_json().replace('"rule"', '"liked"'), "source 'liked' is not one of"),
        (pair().to_json().replace('"b"', '"a"'), "chosen and rejected are the same text"),
        (pair().to_json()[:-1] + ', "extra": "x"}', "unknown key extra"),
        (pair().to_json().replace('"a"', "3"), "chosen is not a string"),
    ],
)
def test_a_bad_line_is_named_with_what_is_allowed(tmp_path, line, expected):
    path = tmp_path / "pairs.jsonl"
    path.write_text(pair().to_json() + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError) as caught:
        read_pairs(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: not a preference pair: ")
    assert expected in message
    assert "with source one of swipe, vote, rule, mend, contrast" in message


def test_a_pair_of_another_character_is_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(pair(character_id="light").to_json() + "\n", encoding="utf-8")
    with pytest.raises(PreferenceDataError, match=r":1: a pair of 'light', not 'goku'"):
        read_pairs(path, "goku")


def test_a_missing_pairs_file_says_so(tmp_path):
    with pytest.raises(PreferenceDataError, match="cannot read the pairs"):
        read_pairs(tmp_path / "none.jsonl")


# -- export ------------------------------------------------------------------------------------


def test_export_writes_pairs_votes_and_a_card(tmp_path, characters_dir):
    from bot.characters import CharacterRegistry

    goku = CharacterRegistry.load(characters_dir).get("goku")
    records = [
        swipe("m1", "kept", "gone"),
        vote("m2", "v1", "good", up=True),
        vote("m2", "v2", "bad", up=False),
    ]
    result = export_records(records, goku, tmp_path / "prefs", since=None)
    folder = tmp_path / "prefs"
    assert sorted(p.name for p in folder.iterdir()) == ["pairs.jsonl", "pairs.md", "votes.jsonl"]
    assert [p.source for p in read_pairs(folder / USER_PAIRS, "goku")] == ["swipe", "vote"]
    votes = [json.loads(line) for line in (folder / USER_VOTES).read_text().splitlines()]
    assert votes == [
        {"prompt": "prompt of m2", "completion": "good", "label": True},
        {"prompt": "prompt of m2", "completion": "bad", "label": False},
    ]
    card = (folder / "pairs.md").read_text()
    assert "- pairs: 2 over 2 prompts" in card
    assert "- swipe: 1" in card and "- vote: 1" in card
    assert "- records: 3 (1 swipe, 2 vote)" in card
    assert "- votes: 2 (1 up, 1 down)" in card
    assert "v1" not in (folder / USER_PAIRS).read_text() + card  # no voter ids leave Redis
    assert len(result.pairs) == 2


def test_since_takes_a_date_or_an_age():
    now = 1_000_000.0
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("12h", now) == now - 12 * 3600
    assert parse_since("2026-11-01") == 1793491200.0
    assert parse_since(None) is None
    with pytest.raises(FinetuneError, match=r"--since 'last week': expected a date like"):
        parse_since("last week")


def test_files_are_written_whole_or_not_at_all(tmp_path, characters_dir, monkeypatch):
    from bot import files
    from bot.characters import CharacterRegistry

    goku = CharacterRegistry.load(characters_dir).get("goku")
    folder = tmp_path / "prefs"
    export_records([swipe("m1", "kept", "gone")], goku, folder, since=None)
    before = {p.name: p.read_text() for p in folder.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError):
        export_records([swipe("m2", "other", "gone")], goku, folder, since=None)
    assert {p.name: p.read_text() for p in folder.iterdir()} == before
    assert not list(Path(folder).glob(".*.tmp"))

"""SillyTavern character cards (`.json`, `.png`): `finetune.cards`."""

from __future__ import annotations

import base64
import json
import struct
import zlib

from bot.characters import load_character
from finetune import cards
from tests.finetune_helpers import (
    FIXTURES,
    error_of,
)


def png_with_text(chunks: dict[str, str]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    for key, value in chunks.items():
        data += chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    data += chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")
    return data


def b64(card: dict) -> str:
    return base64.b64encode(json.dumps(card).encode("utf-8")).decode("ascii")


def test_card_v2_json_becomes_a_loadable_character(tmp_path):
    _, written = cards.import_card(FIXTURES / "card_v2.json", tmp_path, "seraphina")
    assert written == tmp_path / "seraphina" / "character.yaml"
    character = load_character(tmp_path / "seraphina")
    assert character.name == "Seraphina"
    assert character.description == (
        "Seraphina is a forest guardian who heals travellers. User is a lost traveller."
    )
    assert character.personality == ["kind", "protective", "calm"]
    assert character.scenario == "User wakes up in Seraphina's glade."
    assert character.greeting == "Oh, you're awake, User. Rest a little longer."
    examples = [[(x.user, x.character) for x in d] for d in character.examples]
    assert examples == [
        [
            (
                "Where am I?",
                "You are in my glade, safe from the beasts.\nNo one will hurt you here.",
            )
        ],
        # The opening `{{char}}: *hums softly*` has no user line before it: not an exchange.
        [
            ("Who are you?", "I am Seraphina, guardian of this forest."),
            ("Thank you, Seraphina.", "You are welcome, User."),
        ],
    ]
    # An existing card is kept unless forced.
    path = tmp_path / "seraphina" / "character.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "# mine\n", encoding="utf-8")
    assert cards.import_card(FIXTURES / "card_v2.json", tmp_path, "seraphina")[1] is None
    assert path.read_text(encoding="utf-8").endswith("# mine\n")
    cards.import_card(FIXTURES / "card_v2.json", tmp_path, "seraphina", force=True)
    assert "# mine" not in path.read_text(encoding="utf-8")
    assert not list((tmp_path / "seraphina").glob("*.tmp"))


def test_png_card_prefers_ccv3_and_v1_fields_are_read(tmp_path):
    v1 = {"char_name": "Old", "char_persona": "An old card.", "char_greeting": "Hi."}
    v3 = {"spec": "chara_card_v3", "data": {"name": "Nova", "description": "A pilot."}}
    path = tmp_path / "nova.png"
    path.write_bytes(png_with_text({"chara": b64(v1), "ccv3": b64(v3)}))
    assert cards.read_card(path).name == "Nova"
    path.write_bytes(png_with_text({"chara": b64(v1)}))
    card = cards.read_card(path)
    assert (card.name, card.description, card.first_mes) == ("Old", "An old card.", "Hi.")
    data = cards.card_to_data(card, "old")
    assert data["greeting"] == "Hi." and "examples" not in data
    path.write_bytes(png_with_text({"Comment": "nothing here"}))
    assert "no 'chara' or 'ccv3' text chunk (found: Comment)" in error_of(cards.read_card, path)
